"""Sessions: start a run, continue one, or resume from a checkpoint.

Each opens its run the same way (open_run: device, data and a fresh state, then the locked run
directory with its config, metrics log and data report) and hands the state to the loop.
Everything that can fail on bad input fails before a file is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ganctl import checkpoint, distributed, rundir
from ganctl.config import BATCH_AUTO, RESUME_OVERRIDABLE, Config
from ganctl.data import ImageSet, is_path, load_dataset
from ganctl.data.cache import skip_summary
from ganctl.device import (
    Precision,
    configure_determinism,
    cpu_bf16_emulated,
    cpu_bf16_faster,
    describe,
    resolve_device,
    resolve_precision,
)
from ganctl.engine.compiled import resolve_compile
from ganctl.engine.loop import RunResult, fit
from ganctl.engine.memory import find_batch_size
from ganctl.engine.state import TrainState, check_values, init_state, load_state
from ganctl.errors import CheckpointError, ConfigError, DataError
from ganctl.info import trained_processes
from ganctl.metrics import parse_metrics
from ganctl.models import get_arch
from ganctl.models.backbone import check_recorded
from ganctl.output.progress import RunLog
from ganctl.output.sinks import DEFAULT_WANDB_PROJECT, check_sinks
from ganctl.scoring import TRAIN_OPTIONS, Evaluator, make_evaluator
from ganctl.settings import MODEL_KEYS, normalise
from ganctl.stored import check_models, stored_config

CheckData = Callable[[ImageSet], None]
Restore = Callable[[TrainState], None]


# --- opening a run -------------------------------------------------------------------------------

def _write_run_files(run_dir: Path, config: Config, data: ImageSet, log: RunLog) -> None:
    rundir.write_config(run_dir, config)
    _write_data_report(run_dir, config, data, log)


def _write_data_report(run_dir: Path, config: Config, data: ImageSet, log: RunLog) -> None:
    cached = {("cache_key" if k == "fingerprint" else k): v for k, v in data.report.items()}
    report = {**cached, "dataset": config.dataset, "split": config.split,
              "resolution": config.resolution, "channels": config.channels, "crop": config.crop,
              "fingerprint": data.fingerprint, "classes": data.classes, **data.label_report()}
    rundir.write_json(run_dir / rundir.DATA_REPORT, report)
    for line in [s for s in [skip_summary(data.report)] if s] + data.label_warnings():
        log.info(f"{line}: see {run_dir / rundir.DATA_REPORT}")


def _claim(out: Path | None, config: Config, overwrite: bool, held: ExitStack,
           log: RunLog) -> tuple[Path, bool]:
    """A new run directory, locked: `out` (replacing the run there, under its lock, with
    --overwrite) or the next numbered one under the runs root. Also: whether it was made here."""
    replacing = out is not None and rundir.is_run_dir(out)
    made = out is None or not out.exists()
    if replacing:
        assert out is not None
        held.enter_context(rundir.locked(out))  # a run in use is refused before anything goes
        if overwrite:
            log.info(f"--overwrite: removing the previous run's files in {out}")
            rundir.remove_run(out)
    run_dir = rundir.create_run_dir(out, config, overwrite=replacing and overwrite)
    if not replacing:
        held.enter_context(rundir.locked(run_dir))
    return run_dir, made


def _check_classes(config: Config, data: ImageSet, what: str, fix: str = "") -> None:
    """The class names a config holds must be the data's: a label's meaning may not change."""
    if config.classes and tuple(config.classes) != tuple(data.classes):
        def show(names: tuple[str, ...] | list[str]) -> str:
            return (", ".join(names[:8]) + (" ..." if len(names) > 8 else "")) or "none"
        raise DataError(f"{what} the classes {show(config.classes)}, but dataset {config.dataset!r} "
                        f"has {show(data.classes)}; labels would change meaning{fix}")


@dataclass
class Opened:
    run_dir: Path
    state: TrainState
    data: ImageSet
    evaluate: Evaluator | None  # with --eval-every


def fit_to_data(config: Config, data: ImageSet) -> Config:
    """A new run's config with the data's class names (a config may repeat them, not change
    them); a conditional one needs every image in a class."""
    _check_classes(config, data, "the config names",
                   "; remove classes from the config file (a run's config.json holds its data's)")
    config = config.replace(classes=tuple(data.classes))
    if config.conditional:
        _check_conditional(config, data)
    return config


def on_device(config: Config, device: torch.device) -> Config:
    """The config with what "auto" means on `device` for precision and compile (the run records
    what it ran with); an explicit choice the device cannot run is a DeviceError now."""
    return config.replace(precision=resolve_precision(config.precision, device, config),
                          compile=resolve_compile(config.compile, device))


def runtime_notes(config: Config, device: torch.device) -> list[str]:
    """One line for each runtime setting that does nothing (or costs much) on `device`."""
    notes = []
    if config.precision == "tf32" and device.type != "cuda":
        notes.append(f"--precision tf32 changes nothing on {device.type} (TensorFloat-32 is a "
                     "CUDA GPU's): it runs fp32")
    if config.precision == "fp16" and device.type == "cpu":
        notes.append("--precision fp16 on a CPU is emulated and several times slower than fp32 "
                     "(bf16 may be faster where the CPU has bf16 instructions)")
    if config.precision == "bf16" and device.type == "cpu" and cpu_bf16_emulated():
        notes.append("--precision bf16 on this CPU is emulated (it has no AVX512-BF16 or AMX) and "
                     "several times slower than fp32 here; --precision auto picks fp32 on it")
    if config.compile == "off" and config.compile_mode != "default":
        notes.append(f"--compile-mode {config.compile_mode} does nothing without --compile")
    elif (config.compile == "on" and device.type != "cuda"
          and config.compile_mode in ("reduce-overhead", "max-autotune")):
        notes.append(f"--compile-mode {config.compile_mode}: CUDA graphs need a CUDA GPU; on "
                     f"{device.type} it compiles as without them")
    return notes


def runtime(config: Config, device: torch.device) -> str:
    """How the step runs, for the start line: device, precision, compiled or eager."""
    how = f"compiled ({config.compile_mode})" if config.compile == "on" else "eager"
    precision = Precision(config.precision, device).describe()
    if device.type == "cpu" and config.precision == "bf16" and cpu_bf16_faster(config):
        precision += " (auto's choice here: native bf16 on this CPU)"
    return f"device {describe(device)}, {precision}, {how}"


def _evaluator(config: Config, data: ImageSet, device: torch.device, download: bool,
               log: RunLog) -> Evaluator | None:
    """For --eval-every: the feature network and the real statistics, before anything is written
    (no Inception offline is an error now, not after hours of training)."""
    if not config.eval_every:
        return None
    return make_evaluator(config, data, device, parse_metrics(config.eval_metrics), config.eval_num,
                          config.eval_num_real or None, config.inception or None, download, log,
                          progress=False, options=TRAIN_OPTIONS)


def _check_conditional(config: Config, data: ImageSet) -> None:
    """A conditional model needs every image in a class."""
    if not data.classes:
        raise DataError(f"--conditional needs labelled data (two or more class folders, or a "
                        f"labelled dataset such as cifar10 or mnist); {config.dataset!r} has no "
                        "classes")
    unlabelled = data.label_report().get("unlabelled", 0)
    if unlabelled:
        raise DataError(f"--conditional needs every image in a class, but {unlabelled} images of "
                        f"{config.dataset!r} are beside the class folders; move them into one")


@contextmanager
def open_run(config: Config, log: RunLog, download: bool, out: Path | None, *,
             check: CheckData | None = None, restore: Restore | None = None,
             overwrite: bool = False, initialise: Restore | None = None) -> Iterator[Opened]:
    """Device, data (checked by `check`), a fresh state and the evaluator; then the run
    directory, locked: without `restore` a new one (`out`, or the next numbered); with it the
    existing run `out`, into whose state `restore` loads its checkpoint. Then config.json,
    metrics.jsonl and the data report."""
    device = distributed.setup(resolve_device(config.device))  # under torchrun: this rank's
    configure_determinism(config.deterministic)
    config = on_device(config, device)
    check_sinks(config)  # --tensorboard/--wandb without their package: an error before any file
    for note in runtime_notes(config, device):
        log.info(note)
    with distributed.local_first():  # the decode cache built once per node, not once per rank
        data = load_dataset(config, download=download, progress=log.task)
    if check is not None:
        check(data)
    if restore is None:  # a new run: the class names come from the data (a config may repeat them)
        config = fit_to_data(config, data)
    elif config.conditional:
        _check_conditional(config, data)
    labels = data.labels if config.classes else None
    if config.batch_size == BATCH_AUTO and distributed.WORLD.active:
        raise ConfigError("--batch-size auto measures one process; with several give the global "
                          "batch as a number (auto's choice on one GPU times the GPUs, say)")
    if config.batch_size == BATCH_AUTO:
        config = config.replace(batch_size=find_batch_size(config, device, data.images, labels,
                                                           log.info))
    for note in get_arch(config.arch).notes(config):
        log.info(note)
    state = init_state(config, device, data.images, labels)  # fails (too big ...) before any file
    try:
        if initialise is not None:  # --init-from's weights: a mismatch fails before any file
            initialise(state)
        writer = distributed.WORLD.writer  # rank 0 alone writes
        with distributed.local_first():  # real statistics computed once per node, then cached
            evaluate = _evaluator(config, data, device, download, log)
        with ExitStack() as held:
            if restore is None and writer:
                run_dir, made = _claim(out, config, overwrite, held, log)
                try:
                    _write_run_files(run_dir, config, data, log)
                except BaseException:  # a full disk ...: leave no half-made run behind
                    rundir.abandon(run_dir, made)
                    raise
            elif restore is not None:
                assert out is not None
                run_dir = out
                if writer:
                    held.enter_context(rundir.locked(run_dir))
                restore(state)
                if writer:
                    _write_run_files(run_dir, config, data, log)
            run_dir = Path(distributed.broadcast_object(str(run_dir) if writer else None))
            if writer:
                log.attach(run_dir / rundir.METRICS)
            yield Opened(run_dir, state, data, evaluate)
    finally:
        state.batches.close()


# --- the three ways in --------------------------------------------------------------------------

def train(config: Config, out: Path | None, log: RunLog, download: bool = True,
          deadline: float | None = None, overwrite: bool = False) -> RunResult:
    """Start a new run of `config` in `out` (or the next numbered run dir) and train it; with
    config.init_from, from that checkpoint's weights."""
    initialise = None
    if config.init_from:
        header = rundir.locate(config.init_from, log.info)  # verified: its weights are used
        config = config.replace(init_from=str(header.path.absolute()))
        initialise = _init_weights(header, config)
    with open_run(config, log, download, out, overwrite=overwrite, initialise=initialise) as run:
        c = run.state.config
        log.info(f"run {run.run_dir}: {c.arch} {c.resolution}x{c.resolution}x{c.channels} on "
                 f"{c.dataset} ({len(run.data.images)} images), batch {c.batch_size}"
                 f"{per_process(c)}, {runtime(c, run.state.batches.device)}")
        if c.init_from:
            log.info(f"weights of G, D and G_ema from {c.init_from} (fine-tuning from step 0)")
        log.info(length_line(c, len(run.data.images)))
        return fit(run.state, run.run_dir, log, run.data.fingerprint, deadline, run.evaluate)


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


def per_process(config: Config) -> str:
    """', 32 per process on 2 processes' under torchrun; '' for one process."""
    size = distributed.WORLD.size
    if size == 1:
        return ""
    sync = "synchronised" if config.sync_bn else "per process"
    return f" ({config.batch_size // size} per process on {size} processes, BatchNorm {sync})"


def length_line(config: Config, images: int) -> str:
    """What the run will do, before its first step: steps, batch, images seen and passes."""
    seen = config.steps * config.batch_size
    passes = seen / max(images, 1)
    return (f"{config.steps:,} step{'s' if config.steps != 1 else ''} of batch "
            f"{config.batch_size}: {seen:,} images, "
            f"{f'{passes:,.1f}' if passes >= 0.1 else 'under 0.1'} passes over the data")


def _init_weights(header: checkpoint.Header, config: Config) -> Restore:
    """Fine-tuning: G, D and G_ema from another run's checkpoint, with fresh optimisers at step 0.
    The model must be the same (a ConfigError naming what differs, before any file is written)."""
    source = stored_config(header)
    check_models(header, source)  # a damaged file (a tensor's shape or dtype) named by its path
    differ = [key for key in MODEL_KEYS if not _same_model_setting(source, config, key)]
    if differ:
        theirs = ", ".join(f"{k} {_model_setting(source, k)}" for k in differ)
        ours = ", ".join(f"{k} {_model_setting(config, k)}" for k in differ)
        raise ConfigError(f"--init-from {header.path} was trained with {theirs}, this run has "
                          f"{ours}; fine-tuning needs the same model: drop those settings (they "
                          "come from the checkpoint) or start without --init-from")
    if not config.conditional:  # a conditional model's shape waits for the data's classes
        _same_structure(header, config)

    def initialise(state: TrainState) -> None:
        if len(source.classes) != len(state.config.classes) and source.conditional:
            raise ConfigError(f"--init-from {header.path} is conditional on {len(source.classes)} "
                              f"classes, dataset {state.config.dataset!r} has "
                              f"{len(state.config.classes)}; fine-tune a conditional model on "
                              "data with as many classes, or use --no-conditional from an "
                              "unconditional run")
        if state.config.conditional:  # now that the data's classes shape it
            _same_structure(header, state.config)
        tensors = checkpoint.load_tensors(header, ("G.", "D.", "G_ema."))
        header.close()  # the file is not read again: no descriptor held for the whole run
        for name in ("G", "D", "G_ema"):
            checkpoint.load_module(getattr(state, name), tensors, name)
    return initialise


def _same_structure(header: checkpoint.Header, config: Config) -> None:
    """The networks `config` builds hold the checkpoint's tensors, name for name and shape for
    shape; other settings than the model's change them too (dcgan's D drops BatchNorm for a
    gradient penalty), which the error says."""
    with torch.device("meta"):
        G, D = get_arch(config.arch).build(config)
    try:
        for name, net in (("G", G), ("D", D), ("G_ema", G)):
            checkpoint.check_shapes(net, header, name)
    except CheckpointError as e:
        why = "; ".join(get_arch(config.arch).notes(config)) or "another loss or penalty"
        raise ConfigError(f"--init-from {header.path}: this run's networks differ from the "
                          f"checkpoint's ({str(e).split('(')[-1].rstrip(')')}), because of {why}; "
                          "fine-tune with the loss and penalties the model was trained with") from None


def _model_setting(config: Config, key: str) -> Any:
    """A model setting as it takes effect (spectral norm auto is on for resnet)."""
    if key == "spectral_norm":
        return "on" if get_arch(config.arch).spectral_norm(config) else "off"
    return getattr(config, key)


def _same_model_setting(a: Config, b: Config, key: str) -> bool:
    if key == "spectral_norm":  # by its effect: auto is on for resnet
        return bool(get_arch(a.arch).spectral_norm(a) == get_arch(b.arch).spectral_norm(b))
    return bool(getattr(a, key) == getattr(b, key))


def continue_run(out: Path, values: dict[str, Any], log: RunLog, download: bool = True,
                 deadline: float | None = None) -> RunResult:
    """`train --resume` into an existing run: resume it, refusing settings it was not started with."""
    stored = rundir.read_config(out)
    for key, value in normalise(values).items():
        if key not in RESUME_OVERRIDABLE and not _same_setting(stored, key, value):
            raise ConfigError(f"{out} was started with {key} = {getattr(stored, key)!r}; --resume "
                              f"continues it as it was, so {key} cannot become {value!r}")
    overrides = {k: v for k, v in normalise(values).items() if k in RESUME_OVERRIDABLE}
    return resume(str(out), overrides, log, download, deadline=deadline)


def _same_setting(stored: Config, key: str, value: Any) -> bool:
    """Whether `value` for `key` is what the run already has: spectral_norm by its effect ('auto'
    on a resnet is 'on'; a batch size of 'auto' is whatever the run found), everything else as
    stored."""
    if key == "batch_size" and value == BATCH_AUTO:
        return True
    changed = stored.replace(**{key: value})
    if key == "spectral_norm":
        arch = get_arch(stored.arch)
        return arch.spectral_norm(changed) == arch.spectral_norm(stored)
    return bool(getattr(changed, key) == getattr(stored, key))


def _checkpoint_config(header: checkpoint.Header, overrides: dict[str, Any]) -> Config:
    """The config stored in a checkpoint with `overrides`, its model's shapes checked against the
    file on the meta device: a hostile config must not make us allocate."""
    config = stored_config(header, overrides)
    if config.steps < header.step:
        raise ConfigError(f"{header.path} is at step {header.step}, past --steps {config.steps}; "
                          "--steps is the run's total length, pass a larger one")
    check_models(header, config)
    return config


AUTO_RUNTIME = ("precision", "compile")  # what "auto" chooses by the kind of device


def _moved(config: Config, header: checkpoint.Header, overrides: dict[str, Any],
           log: RunLog) -> Config:
    """A run resumed on another kind of device (a GPU run on a CPU, or the reverse) takes what
    "auto" means there for precision and compile, unless the user gave them: bf16 and compile
    suit a GPU, eager a CPU (fp32, or bf16 where the CPU has it natively and the model was
    measured faster in it). The user is told."""
    before = header.metadata.get("ganctl.device", "").split(":")[0]
    now = resolve_device(config.device).type
    free = [k for k in AUTO_RUNTIME if k not in overrides]
    if not before or before == now or not free:
        return config
    moved = on_device(config.replace(**{k: "auto" for k in free}), torch.device(now))
    changed = [f"{k} {getattr(config, k)} -> {getattr(moved, k)}" for k in free
               if getattr(moved, k) != getattr(config, k)]
    if changed:
        log.info(f"the run moves from {before} to {now}: {', '.join(changed)} (what auto means "
                 f"on {now}; pass --precision/--compile to choose)")
    return moved


def _wandb_project_note(before: dict[str, Any], config: Config, log: RunLog) -> None:
    """W&B keeps a run per project: a run that logged to one and resumes with --wandb-project
    naming another starts a new W&B run there, which the user is told rather than left to find."""
    if not (config.wandb and before.get("wandb") is True):
        return
    was = before.get("wandb_project") or DEFAULT_WANDB_PROJECT
    now = config.wandb_project or DEFAULT_WANDB_PROJECT
    if was != now:
        log.info(f"W&B: this run logged to project {was!r}; in project {now!r} it continues as a "
                 f"new W&B run (W&B keeps runs per project; --wandb-project {was} keeps the old one)")


def _check_dataset_exists(config: Config, run_dir: Path) -> None:
    """A run's folder or zip dataset must still be where the run recorded it: a moved one (or
    another machine's path) is named, not silently replaced by whatever is there now."""
    if is_path(config.dataset) and not Path(config.dataset).exists():
        raise DataError(f"the dataset of {run_dir}, {config.dataset}, does not exist (moved, or "
                        f"another machine's path); pass where it is now: ganctl resume {run_dir} "
                        "--dataset PATH")


def resume(target: str | None, overrides: dict[str, Any], log: RunLog, download: bool = True,
           allow_data_change: bool = False, deadline: float | None = None) -> RunResult:
    """Continue a run from its newest checkpoint (or the given one) up to config.steps."""
    bad = sorted(set(overrides) - RESUME_OVERRIDABLE)
    if bad:
        raise ConfigError(f"resume cannot change {bad[0]!r}; only "
                          f"{', '.join(sorted(RESUME_OVERRIDABLE))} may change")
    overrides = normalise(overrides)
    if target is not None and rundir.is_run_dir(Path(target)) and not rundir.list_checkpoints(
            Path(target) / rundir.CKPT_DIR):
        # stopped before its first checkpoint: nothing to lose, so start it again as configured
        run_dir = Path(target)
        config = rundir.read_config(run_dir).replace(**overrides)
        _check_dataset_exists(config, run_dir)
        log.info(f"{run_dir} has no checkpoint yet (it stopped before the first one): starting it "
                 "again from step 0")
        return train(config, run_dir, log, download, deadline, overwrite=True)
    header = rundir.locate(target, log.info)  # falls back past damaged checkpoints
    ckpt = header.path
    run_dir = rundir.run_dir_of(ckpt)
    if not rundir.is_run_dir(run_dir):  # resume writes there: it must be a run of ours
        raise CheckpointError(f"{ckpt} is not in a ganctl run ({run_dir} has no run marker); "
                              "resume continues runs in place: copy the checkpoint into a run's "
                              "checkpoints/ or start a new run")
    config = _moved(_checkpoint_config(header, overrides), header, overrides, log)
    _check_dataset_exists(config, run_dir)
    _wandb_project_note(header.config, config, log)

    def check(data: ImageSet) -> None:
        _check_classes(config, data, "the run was started with")  # not even --allow-data-change
        recorded = header.metadata.get("ganctl.dataset_fingerprint")
        if recorded and recorded != data.fingerprint:
            if not allow_data_change:
                raise DataError(f"dataset {config.dataset!r} changed since this run started "
                                f"(fingerprint {recorded} -> {data.fingerprint}); resume with "
                                "--allow-data-change to train on it anyway")
            log.info(f"dataset changed since the run started ({recorded} -> {data.fingerprint}); "
                     "continuing as --allow-data-change asks")

    def restore(state: TrainState) -> None:
        """The checkpoint's state into the fresh one, every tensor checked (names, dtypes,
        ranges, finite values) before a file of the run is touched."""
        check_recorded(header.metadata.get("ganctl.backbones"), state.backbones, ckpt)
        tensors = checkpoint.load_tensors(header)
        try:
            load_state(state, tensors, log.info, step=header.step)
        except CheckpointError as e:
            raise CheckpointError(f"{ckpt}: {e}") from None
        check_values(ckpt, tensors)
        trained_on = trained_processes(header)
        here = distributed.WORLD.size
        if trained_on != here:
            log.info(f"this run trained on {_processes(trained_on)}; it continues on {_processes(here)} "
                     f"(the global batch {state.config.batch_size} stays, "
                     f"{state.config.batch_size // here} per process)")
        if not distributed.WORLD.writer:
            return
        damaged = rundir.trim_metrics(run_dir, state.step)
        if damaged:
            log.info(f"{run_dir / rundir.METRICS}: dropped {damaged} damaged line(s) (cut short, "
                     "not UTF-8 or not a JSON object)")
        rundir.remove_temp_files(run_dir)

    with open_run(config, log, download, run_dir, check=check, restore=restore) as run:
        header = dataclasses.replace(header, blob=None)  # loaded: the file's bytes may go
        state = run.state
        device = state.batches.device
        log.info(f"resuming {run_dir} from {ckpt.name} (step {state.step} of {config.steps}), "
                 f"batch {state.config.batch_size}{per_process(state.config)}, "
                 f"{runtime(state.config, device)}")
        if state.step == config.steps:
            log.info(f"run is already complete at step {state.step}; pass a larger --steps to "
                     "train further")
            return RunResult(run_dir=str(run_dir), checkpoint=str(ckpt), samples=None,
                             step=state.step, steps=config.steps, device=str(device), seconds=0.0,
                             metrics=header.metrics, batch_size=state.config.batch_size,
                             precision=state.config.precision, compiled=state.compiled)
        return fit(state, run_dir, log, run.data.fingerprint, deadline, run.evaluate)


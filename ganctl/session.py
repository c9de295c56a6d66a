"""Sessions: open a run (open_run: device, data and a fresh state, then the locked run
directory with its config, metrics log and data report) and start a new one (train, from
scratch or, with init_from, from another run's weights: finetune.py). resuming.py continues
runs through the same open_run. Everything that can fail on bad input fails before a file is
written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ganctl import distributed, rundir
from ganctl.config import BATCH_AUTO, Config
from ganctl.data import ImageSet, load_dataset
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
from ganctl.engine.compiled import resolve_compile, resolve_compile_mode
from ganctl.engine.loop import RunResult, fit
from ganctl.engine.memory import find_batch_size
from ganctl.engine.state import TrainState, init_state
from ganctl.errors import ConfigError, DataError
from ganctl.finetune import init_weights
from ganctl.importers import convert
from ganctl.metrics import parse_metrics
from ganctl.models import cpu_note, describe_model, fetch_backbones, get_arch
from ganctl.output.progress import RunLog
from ganctl.output.sinks import check_sinks
from ganctl.scoring import TRAIN_OPTIONS, Evaluator, make_evaluator

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


def check_classes(config: Config, data: ImageSet, what: str, fix: str = "") -> None:
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
    check_classes(config, data, "the config names",
                   "; remove classes from the config file (a run's config.json holds its data's)")
    config = config.replace(classes=tuple(data.classes))
    if config.conditional:
        _check_conditional(config, data)
    return config


def on_device(config: Config, device: torch.device) -> Config:
    """The config with what "auto" means on `device` for precision and compile (the run records
    what it ran with); an explicit choice the device cannot run is a DeviceError now."""
    return config.replace(precision=resolve_precision(config.precision, device, config),
                          compile=resolve_compile(config.compile, device),
                          compile_mode=resolve_compile_mode(config, device))


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
    if device.type == "cpu" and (big := cpu_note(config)) is not None:
        log.info(big)
    with distributed.local_first():  # a backbone's weights downloaded once per node, visibly
        fetch_backbones(config, download, log.task)
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


# --- a new run --------------------------------------------------------------------------

def train(config: Config, out: Path | None, log: RunLog, download: bool = True,
          deadline: float | None = None, overwrite: bool = False) -> RunResult:
    """Start a new run of `config` in `out` (or the next numbered run dir) and train it; with
    config.init_from, from that checkpoint's weights."""
    initialise = None
    if config.init_from:
        header = convert.locate(config.init_from, log.info)  # verified: its weights are used
        config = config.replace(init_from=str(header.path.absolute()))
        initialise = init_weights(header, config)
    with open_run(config, log, download, out, overwrite=overwrite, initialise=initialise) as run:
        c = run.state.config
        log.info(f"run {run.run_dir}: {describe_model(c)} {c.resolution}x{c.resolution}x{c.channels} on "
                 f"{c.dataset} ({len(run.data.images)} images), batch {c.batch_size}"
                 f"{per_process(c)}, {runtime(c, run.state.batches.device)}")
        if c.init_from:
            log.info(f"weights of G, D and G_ema from {c.init_from} (fine-tuning from step 0)")
        log.info(length_line(c, len(run.data.images)))
        return fit(run.state, run.run_dir, log, run.data.fingerprint, deadline, run.evaluate)


def processes(n: int) -> str:
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

"""Continuing a run: `ganctl resume` (from its newest checkpoint, or a given one) and
`ganctl train --resume` (the run in --out, refusing settings it was not started with).

The checkpoint's config is the run's; only the settings config.RESUME_OVERRIDABLE names may
change. Every tensor is checked before a file of the run is touched, and the data must be the
data the run started on (its fingerprint) unless the user allows a change.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ganctl import checkpoint, distributed, rundir
from ganctl.config import BATCH_AUTO, RESUME_OVERRIDABLE, Config
from ganctl.data import ImageSet, is_path
from ganctl.device import resolve_device
from ganctl.engine.loop import RunResult, fit
from ganctl.engine.state import TrainState, check_values, load_state
from ganctl.errors import CheckpointError, ConfigError, DataError
from ganctl.importers.convert import is_network_file
from ganctl.info import trained_processes
from ganctl.models import get_arch
from ganctl.models.backbone import check_recorded
from ganctl.output.progress import RunLog
from ganctl.output.sinks import DEFAULT_WANDB_PROJECT
from ganctl.session import (
    CheckData,
    Opened,
    Restore,
    check_classes,
    on_device,
    open_run,
    per_process,
    processes,
    runtime,
    train,
)
from ganctl.settings import normalise
from ganctl.stored import check_models, stored_config


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


def resume(target: str | None, overrides: dict[str, Any], log: RunLog, download: bool = True,
           allow_data_change: bool = False, deadline: float | None = None) -> RunResult:
    """Continue a run from its newest checkpoint (or the given one) up to config.steps, with
    `overrides` of settings resume may change."""
    overrides = normalise(overrides)  # (only what resume may change: api.run_resume checks)
    if target is not None and rundir.is_run_dir(Path(target)) and not rundir.list_checkpoints(
            Path(target) / rundir.CKPT_DIR):
        return _start_again(Path(target), overrides, log, download, deadline)
    if is_network_file(target):
        raise ConfigError(f"{target} is an NVlabs network, not a ganctl run; resume continues a "
                          f"run: fine-tune from it with ganctl train --init-from {target}")
    header = rundir.locate(target, log.info)  # falls back past damaged checkpoints
    run_dir = rundir.run_dir_of(header.path)
    if not rundir.is_run_dir(run_dir):  # resume writes there: it must be a run of ours
        raise CheckpointError(f"{header.path} is not in a ganctl run ({run_dir} has no run "
                              "marker); resume continues runs in place: copy the checkpoint into "
                              "a run's checkpoints/ or start a new run")
    config = _moved(_checkpoint_config(header, overrides), header, overrides, log)
    _check_dataset_exists(config, run_dir)
    _wandb_project_note(header.config, config, log)
    check = _data_check(header, config, allow_data_change, log)
    with open_run(config, log, download, run_dir, check=check,
                  restore=_restore(header, run_dir, log)) as run:
        header = dataclasses.replace(header, blob=None)  # loaded: the file's bytes may go
        return _go_on(run, header, deadline, log)


def _start_again(run_dir: Path, overrides: dict[str, Any], log: RunLog, download: bool,
                 deadline: float | None) -> RunResult:
    """A run stopped before its first checkpoint: nothing to lose, so it starts again as
    configured, in the same directory."""
    config = rundir.read_config(run_dir).replace(**overrides)
    _check_dataset_exists(config, run_dir)
    log.info(f"{run_dir} has no checkpoint yet (it stopped before the first one): starting it "
             "again from step 0")
    return train(config, run_dir, log, download, deadline, overwrite=True)


def _go_on(run: Opened, header: checkpoint.Header, deadline: float | None,
           log: RunLog) -> RunResult:
    state, steps = run.state, run.state.config.steps
    log.info(f"resuming {run.run_dir} from {header.path.name} (step {state.step} of {steps}), "
             f"batch {state.config.batch_size}{per_process(state.config)}, "
             f"{runtime(state.config, state.batches.device)}")
    if state.step == steps:
        log.info(f"run is already complete at step {state.step}; pass a larger --steps to "
                 "train further")
        return RunResult.of(state, run.run_dir, header.path, None, header.metrics, 0.0)
    return fit(state, run.run_dir, log, run.data.fingerprint, deadline, run.evaluate)


def _data_check(header: checkpoint.Header, config: Config, allow_data_change: bool,
                log: RunLog) -> CheckData:
    """The data must hold the run's classes (not even --allow-data-change changes them) and,
    unless allowed, be the data the run started on."""
    def check(data: ImageSet) -> None:
        check_classes(config, data, "the run was started with")
        recorded = header.metadata.get("ganctl.dataset_fingerprint")
        if recorded and recorded != data.fingerprint:
            if not allow_data_change:
                raise DataError(f"dataset {config.dataset!r} changed since this run started "
                                f"(fingerprint {recorded} -> {data.fingerprint}); resume with "
                                "--allow-data-change to train on it anyway")
            log.info(f"dataset changed since the run started ({recorded} -> {data.fingerprint}); "
                     "continuing as --allow-data-change asks")
    return check


def _restore(header: checkpoint.Header, run_dir: Path, log: RunLog) -> Restore:
    def restore(state: TrainState) -> None:
        """The checkpoint's state into the fresh one, every tensor checked (names, dtypes,
        ranges, finite values) before a file of the run is touched."""
        ckpt = header.path
        check_recorded(header.metadata.get("ganctl.backbones"), state.backbones, ckpt)
        tensors = checkpoint.load_tensors(header)
        try:
            load_state(state, tensors, log.info, step=header.step)
        except CheckpointError as e:
            raise CheckpointError(f"{ckpt}: {e}") from None
        check_values(ckpt, tensors)
        trained_on, here = trained_processes(header), distributed.WORLD.size
        if trained_on != here:
            log.info(f"this run trained on {processes(trained_on)}; it continues on "
                     f"{processes(here)} (the global batch {state.config.batch_size} stays, "
                     f"{state.config.batch_size // here} per process)")
        if not distributed.WORLD.writer:
            return
        damaged = rundir.trim_metrics(run_dir, state.step)
        if damaged:
            log.info(f"{run_dir / rundir.METRICS}: dropped {damaged} damaged line(s) (cut short, "
                     "not UTF-8 or not a JSON object)")
        rundir.remove_temp_files(run_dir)
    return restore


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

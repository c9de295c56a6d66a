"""Training from Python: train() starts (or continues) a run as `ganctl train` does, resume()
continues one as `ganctl resume` does; both return a Run. run_training and run_resume are what
the command line calls with its own progress log."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganctl import resuming, rundir, session
from ganctl import settings as layers  # (train takes **settings)
from ganctl.api.checks import PathLike, console, flag, ganctl_errors, got, path, plain
from ganctl.config import FIELD_NAMES, RESUME_OVERRIDABLE
from ganctl.configfile import load_config_file
from ganctl.engine.loop import RunResult
from ganctl.errors import ConfigError, RunError, Stopped, UsageError, did_you_mean, shorten
from ganctl.output.progress import RunLog

if TYPE_CHECKING:
    from ganctl.api.generator import Generator

# flags of `ganctl train` that are not settings of a run, and what a Python caller does instead
COMMAND_LINE_ONLY = {
    "gpus": "several processes are started by the command line (ganctl train --gpus N, or "
            "torchrun -m ganctl train); train() trains in this process",
    "print_config": "the resolved settings are ganctl.settings.resolve_config(settings)",
    "list_presets": "the presets are ganctl.presets.PRESETS",
    "json": "train() returns a Run; its .result is what --json prints",
    "debug": "errors are raised as they are, tracebacks included"}
# train()'s own arguments; every other keyword is a config key (ganctl.config.Config's fields)
TRAIN_ARGS = ("out", "config", "max_time", "resume", "overwrite", "download", "quiet")
RESUME_ARGS = ("target", "max_time", "download", "allow_data_change", "quiet")


# --- train ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """Where train() left a run: its directory, the step reached of its total, the last
    checkpoint and sample grid, the last logged metrics; `stopped` is "max-time" when max_time
    ran out first (train again with resume=True to continue). `result` holds everything
    `ganctl train --json` prints (device, seconds, batch size, precision ...)."""

    run_dir: Path
    step: int
    steps: int
    checkpoint: Path | None
    samples: Path | None
    metrics: dict[str, Any] | None
    stopped: str | None
    result: dict[str, Any]

    @classmethod
    def of(cls, result: RunResult) -> Run:
        def as_path(p: str | None) -> Path | None:
            return Path(p) if p is not None else None

        return cls(Path(result.run_dir), result.step, result.steps, as_path(result.checkpoint),
                   as_path(result.samples), result.metrics, result.stopped, result.to_dict())

    @ganctl_errors
    def load(self, device: str = "auto") -> Generator:
        """The generator of this run's last checkpoint (see ganctl.load).

        Example: G = ganctl.train(steps=300).load(); G.grid(n=16)
        """
        from ganctl.api.generator import load

        return load(self.checkpoint or self.run_dir, device)


@ganctl_errors
def train(*, out: PathLike | None = None, config: PathLike | None = None,
          max_time: str | None = None, resume: bool = False, overwrite: bool = False,
          download: bool = True, quiet: bool = False, **settings: Any) -> Run:
    """Train a GAN as `ganctl train` does; returns the Run.

    `settings` are config keys, as the command line's flags with underscores (batch_size=32 for
    --batch-size 32; the fields of ganctl.config.Config): dataset, preset, arch, loss, steps,
    device, ... A setting of None counts as not given; numpy's numbers count as Python's.
    They are layered as on the command line: defaults < the dataset's preset < preset= < the
    config= file (TOML or JSON) < settings.
    out: the run directory (default: the next ./runs/NNNN-<dataset>-<arch>). resume=True
    continues the run in `out` if there is one (settings it was started with may be repeated,
    not changed), overwrite=True replaces it. max_time ("3h30m", "90m") stops with a
    checkpoint in time, counted from this call. Progress goes to stderr; quiet=True: nothing.

    Ctrl-C (or a notebook's interrupt) finishes the step under way, writes a checkpoint and
    raises ganctl.errors.Stopped, whose .result says where the run stands; train(out=...,
    resume=True) continues it. Called from another thread than the main one, train() cannot
    catch signals and leaves them to their handlers.

    Example: run = ganctl.train(dataset="mnist", steps=2000, batch_size=64, out="runs/m")
    """
    given = _settings(settings, "train()", TRAIN_ARGS)
    for name, value in (("resume", resume), ("overwrite", overwrite), ("download", download),
                        ("quiet", quiet)):
        flag(name, value)
    path("out", out, "a run directory's path")
    path("config", config, "the path of a TOML or JSON config file")
    _check_duration(max_time)
    if resume and overwrite:
        raise ConfigError("resume=True and overwrite=True exclude each other: continue the run "
                          "in out, or replace it")
    if (resume or overwrite) and out is None:
        raise ConfigError("resume=True and overwrite=True need out=: the run directory to "
                          "continue or replace")
    if resume and given.get("init_from"):
        raise ConfigError("init_from starts a new run from a checkpoint's weights; resume=True "
                          "continues a run: use one")
    values = {**(load_config_file(Path(config)) if config is not None else {}), **given}
    deadline = layers.deadline_from(max_time)
    try:
        result = run_training(values, Path(out) if out is not None else None,
                              RunLog(console(quiet)), resume=resume, overwrite=overwrite,
                              download=download, deadline=deadline)
    except Stopped as e:
        raise _resumable(e) from None
    except RunError as e:
        if out is None or not rundir.is_run_dir(Path(out)) or "already holds a run" not in str(e):
            raise
        raise RunError(f"{out} already holds a run; continue it with ganctl.train(out={str(out)!r}, "
                       "resume=True), replace it with overwrite=True, or choose another out=") from None
    return Run.of(result)


def run_training(values: dict[str, Any], out: Path | None, log: RunLog, *, resume: bool = False,
                 overwrite: bool = False, download: bool = True, deadline: float | None = None
                 ) -> RunResult:
    """What `ganctl train` and train() do with the settings gathered (a config file's under the
    given ones): continue the run in `out` (resume, where it holds one), or resolve the config,
    say which settings do nothing, and start a new run."""
    if resume and out is not None and rundir.is_run_dir(out):
        return resuming.continue_run(out, values, log, download, deadline)
    resolved = layers.resolve_config(values)
    for note in layers.option_notes(values, resolved):
        log.info(note)
    return session.train(resolved, out, log, download, deadline, overwrite)


@ganctl_errors
def resume(target: PathLike | None = None, *, max_time: str | None = None, download: bool = True,
           allow_data_change: bool = False, quiet: bool = False, **settings: Any) -> Run:
    """Continue a run as `ganctl resume` does, from its newest checkpoint (or the checkpoint
    `target` names; None: the newest run under ./runs) with the config stored in it; returns
    the Run. `settings` may change what resume may change (steps, the intervals, evaluation,
    device, precision, where the data and files are: ganctl.config.RESUME_OVERRIDABLE), as
    keyword arguments like train()'s. allow_data_change=True continues on a dataset that changed
    since the run started. Ctrl-C stops it with a checkpoint, as train() does.

    Example: ganctl.resume("runs/m", steps=4000)
    """
    given = _settings(settings, "resume()", RESUME_ARGS)
    for name, value in (("download", download), ("allow_data_change", allow_data_change),
                        ("quiet", quiet)):
        flag(name, value)
    path("target", target, "a run directory or a checkpoint's path")
    _check_duration(max_time)
    try:
        result = run_resume(None if target is None else os.fspath(target), given,
                            RunLog(console(quiet)), download=download,
                            allow_data_change=allow_data_change,
                            deadline=layers.deadline_from(max_time))
    except Stopped as e:
        raise _resumable(e) from None
    return Run.of(result)


def run_resume(target: str | None, values: dict[str, Any], log: RunLog, *, download: bool = True,
               allow_data_change: bool = False, deadline: float | None = None) -> RunResult:
    """What `ganctl resume` and resume() do: only the settings resume may change, then the run
    continued from its checkpoint."""
    bad = sorted(set(values) - RESUME_OVERRIDABLE)
    if bad:
        raise UsageError(f"resume cannot change {bad[0]!r} (a run continues with the settings it "
                         f"started with); only {', '.join(sorted(RESUME_OVERRIDABLE))} may change",
                         f"--{bad[0].replace('_', '-')}")
    return resuming.resume(target, values, log, download, allow_data_change, deadline)


def _check_duration(max_time: object) -> None:
    if max_time is not None and not isinstance(max_time, str):
        raise ConfigError(f"max_time must be a duration like '3h30m', '90m' or '45s' (a string), "
                          f"got {got(max_time)}")


def _settings(settings: dict[str, Any], caller: str, own: tuple[str, ...]) -> dict[str, Any]:
    """The config keys given, as the plain values a config file holds (see checks.plain); an unknown
    one is a ConfigError that names the closest known name."""
    for key in settings:
        if key in COMMAND_LINE_ONLY:
            raise ConfigError(f"{caller} has no {key}=: {COMMAND_LINE_ONLY[key]}")
        if key not in FIELD_NAMES:
            hint = did_you_mean(key, FIELD_NAMES + own)
            raise ConfigError(f"{caller} got an unknown setting {shorten(key)}{hint}; settings are the "
                              "config keys, the command line's flags with underscores "
                              "(--batch-size is batch_size): see ganctl.config.Config")
    return {k: plain(v) for k, v in settings.items() if v is not None}


def _resumable(e: Stopped) -> Stopped:
    """A stopped run's error, saying how to continue it from Python too."""
    where = (e.result or {}).get("run_dir")
    if where is None:
        return e
    return Stopped(e.exit_code - 128, f"{e}; from Python: ganctl.train(out={where!r}, resume=True)",
                   e.result)



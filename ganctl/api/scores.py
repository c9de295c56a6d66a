"""Scores and listings from Python: evaluate() scores a checkpoint as `ganctl eval` does, runs()
lists runs as `ganctl runs` does."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ganctl.api.checks import (
    Notes,
    PathLike,
    console,
    device_name,
    flag,
    ganctl_errors,
    got,
    locate,
    path,
    whole_number,
)
from ganctl.api.outputs import check_out
from ganctl.config import BOUNDS
from ganctl.device import resolve_device
from ganctl.errors import ConfigError, UsageError
from ganctl.importers.convert import imported
from ganctl.metrics import names_help, parse_metrics
from ganctl.output.progress import RunLog
from ganctl.scoring import API_ARGUMENTS, CountOptions, evaluate_checkpoint
from ganctl.seeds import brief_repr


@ganctl_errors
def evaluate(target: PathLike | None = None, *, metrics: str | Sequence[str] = ("fid", "kid"),
             num: int = 10000, num_real: int | None = None, dataset: str | None = None,
             split: str | None = None, data_dir: PathLike | None = None, device: str = "auto",
             inception: PathLike | None = None, download: bool = True, quiet: bool = False,
             max_file_mb: int | None = None) -> dict[str, Any]:
    """Score a checkpoint's G_ema as `ganctl eval --json` does; returns its JSON document as a
    dict (scores under "metrics", with the image counts, seconds and protocol), and appends the
    scores to the run's metrics.jsonl.

    target as in load(). metrics: "fid", "kid", "pr" (a list, or "fid,kid"). num fakes (seeds
    0..num-1) against num_real reals (None: all) of the run's own data, or of `dataset` (its
    `split`). inception: the feature network's file (default: env GANCTL_INCEPTION, the cache,
    else downloaded unless download=False); max_file_mb: image files larger are skipped (default:
    the run's). Progress goes to stderr; quiet=True: nothing.

    Example: ganctl.evaluate("runs/m", num=10000)["metrics"]["fid"]
    """
    names = parse_metrics(_metrics_text(metrics))
    num = whole_number("num", num, *BOUNDS["eval_num"])
    if num_real is not None:
        num_real = whole_number("num_real", num_real, 2, BOUNDS["eval_num_real"][1])
    for name, value, what in (("dataset", dataset, "a dataset's name or a folder or .zip of images"),
                              ("data_dir", data_dir, "the folder of the named datasets"),
                              ("inception", inception, "the feature network's file")):
        path(name, value, what)
    if split is not None and not isinstance(split, str):
        raise ConfigError(f"split must be a split's name like 'train' or 'test', got "
                          f"{got(split)}")
    if max_file_mb is not None:
        max_file_mb = whole_number("max_file_mb", max_file_mb, *BOUNDS["max_file_mb"])
    flag("download", download)
    flag("quiet", quiet)
    data: dict[str, Any] = {k: os.fspath(v) for k, v in (
        ("dataset", dataset), ("split", split), ("data_dir", data_dir)) if v is not None}
    if max_file_mb is not None:
        data["max_file_mb"] = max_file_mb
    return run_evaluation(target, names, num, num_real, data, device, inception, download,
                          RunLog(console(quiet)), API_ARGUMENTS)


def run_evaluation(target: PathLike | None, names: list[str], num: int, num_real: int | None,
                   data: dict[str, Any], device: object, inception: PathLike | None,
                   download: bool, log: RunLog, options: CountOptions,
                   notes: Notes | None = None) -> dict[str, Any]:
    """What `ganctl eval` and evaluate() do with checked arguments: the checkpoint's G_ema
    scored against its run's data, or the dataset `data` names (its own default split unless
    one is given); `options` name the caller's arguments in messages."""
    dev = device_name(device)
    header = locate(target, notes)
    if "dataset" not in data and (source := imported(header)) is not None:
        trained = (source.get("dataset") or {}).get("path")
        raise ConfigError(f"{header.path} is an NVlabs network, trained on data ganctl does not "
                          f"have{f' ({trained})' if isinstance(trained, str) else ''}: score it "
                          "against yours with --dataset (dataset= in Python): a name or a folder")
    overrides = dict(data)
    if "dataset" in overrides and "split" not in overrides:
        overrides["split"] = ""  # another dataset: its own default split
    return evaluate_checkpoint(header, resolve_device(dev), names, num, num_real, overrides,
                               None if inception is None else os.fspath(inception), download,
                               log, options)


def _metrics_text(metrics: object) -> str:
    """metrics as `ganctl eval --metrics` takes them: "fid,kid", or the names in a list."""
    if isinstance(metrics, str):
        return metrics
    choose = f"choose from {names_help()}"
    if not isinstance(metrics, (list, tuple)):
        raise ConfigError(f"metrics must be names like 'fid,kid' or ['fid', 'kid'], got "
                          f"{got(metrics)}; {choose}")
    for name in metrics:
        if not isinstance(name, str):
            raise ConfigError(f"metric {brief_repr(name)} is not a metric's name; {choose}")
    return ",".join(metrics)


@ganctl_errors
def runs(root: PathLike | None = None) -> list[dict[str, Any]]:
    """The runs under `root` (default ./runs, or env GANCTL_RUNS; or one run directory), as
    `ganctl runs --json` lists them: id, path, status (running, stopped, complete, diverged, new,
    broken), problem, step, steps, last losses, best FID and its step, newest checkpoint, last
    update, bytes. A root that does not exist is an error (a mistyped one is not empty).

    Example: [r["path"] for r in ganctl.api.runs() if r["status"] == "complete"]
    """
    from ganctl.runs import list_runs

    path("root", root, "the folder that holds the runs")
    if root is not None and not os.path.exists(root):  # (a link to nothing is not there)
        raise ConfigError(f"{os.fspath(root)} does not exist; give the folder that holds the runs "
                          "(default ./runs)")
    return list_runs(None if root is None else Path(os.fspath(root)))


@ganctl_errors
def inspect(target: PathLike | None = None, *, verify: bool = True,
            notes: Notes | None = None) -> dict[str, Any]:
    """A checkpoint's header as `ganctl inspect --json` shows it: step, config, parameter
    counts, last losses and scores, where it was trained; no tensor is loaded. verify=False
    reads the header alone (not checking the data against its checksum). An NVlabs network
    file (FILE.pkl): what it holds (networks, settings, classes, augment_p, sha256, the config
    an import gives it), its weights not rebuilt.

    Example: ganctl.api.inspect("runs/m")["step"]
    """
    from ganctl.importers.convert import describe, is_network_file
    from ganctl.info import describe_checkpoint

    flag("verify", verify)
    if is_network_file(target) and isinstance(target, str | os.PathLike):
        path("target", target, "an NVlabs network .pkl")
        return describe(Path(os.fspath(target)))
    return describe_checkpoint(locate(target, notes, verify))


@ganctl_errors
def plot(run: PathLike, out: PathLike | None = None) -> dict[str, Any]:
    """Draw a run's losses, D outputs, augmentation p, img/s and scores against step into `out` (a .png;
    default RUN/curves.png), as `ganctl plot` does; returns the run and the file written."""
    from ganctl.plot import plot_run

    path("run", run, "a run directory", required=True)
    run_dir = Path(os.fspath(run))
    target = check_out(run_dir / "curves.png" if out is None else out)  # a file it may replace
    if target.suffix.lower() != ".png":
        raise UsageError(f"{target} must end in .png", "OUT.png")
    return {"run_dir": str(run_dir), "out": str(plot_run(run_dir, target))}

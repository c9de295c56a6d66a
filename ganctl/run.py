"""Run directories: ./runs/<NNNN>-<dataset>-<arch>/ with config.json, metrics.jsonl, samples/
and checkpoints/. Nothing here deletes a run; an existing run is never written into by train."""

from __future__ import annotations

import fcntl
import json
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ganctl.checkpoint import CKPT_DIR, atomic_write, runs_root
from ganctl.config import Config
from ganctl.errors import RunError
from ganctl.logging import METRICS, read_metrics

CONFIG = "config.json"
DATA_REPORT = "data_report.json"
SAMPLES = "samples"
_INDEX_RE = re.compile(r"^(\d+)-")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_.") or "data"


def _mkdir(path: Path, **kwargs: bool) -> None:
    try:
        path.mkdir(**kwargs)
    except PermissionError:
        raise RunError(f"cannot create {path}: permission denied; choose another --out "
                       "or set GANCTL_RUNS to a writable directory") from None
    except NotADirectoryError:
        raise RunError(f"cannot create {path}: a parent is a file, not a directory") from None
    except OSError as e:
        if isinstance(e, FileExistsError):
            raise
        raise RunError(f"cannot create {path}: {e.strerror}") from None


LOCK = ".lock"


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock: a second process training the same run is refused, not let loose on
    its checkpoints (the lock goes with the process, however it ends)."""
    try:
        handle = open(run_dir / LOCK, "a+")
    except OSError as e:
        raise RunError(f"cannot lock {run_dir}: {e.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise RunError(f"{run_dir} is being trained by another ganctl process; wait for it to end "
                       "or stop it first") from None
    try:
        yield
    finally:
        handle.close()


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG).is_file() or (path / CKPT_DIR).is_dir()


def remove_run(run_dir: Path) -> list[Path]:
    """Delete what ganctl wrote in a run directory (asked for by --overwrite); other files stay."""
    removed = []
    for name in (CONFIG, DATA_REPORT, METRICS):
        if (run_dir / name).is_file():
            (run_dir / name).unlink()
            removed.append(run_dir / name)
    for sub, pattern in ((SAMPLES, "step-*.png"), (CKPT_DIR, "step-*.safetensors"),
                         (CKPT_DIR, "latest"), (CKPT_DIR, ".*.tmp-*"), (SAMPLES, ".*.tmp-*")):
        for path in (run_dir / sub).glob(pattern):
            path.unlink()
            removed.append(path)
    for sub in (SAMPLES, CKPT_DIR):
        try:
            (run_dir / sub).rmdir()
        except OSError:  # absent, or holds files that are not ganctl's
            pass
    return removed


def create_run_dir(out: Path | None, config: Config, overwrite: bool = False) -> Path:
    """A new, empty run directory: `out` if given, else the next free number under the root.
    An existing run in `out` is refused; with `overwrite` (the caller having removed the old
    run's files under its lock) other files in `out` may stay."""
    if out is not None:
        if out.exists():
            if is_run_dir(out):
                raise RunError(f"{out} already holds a run; continue it with `ganctl resume "
                               f"{shlex.quote(str(out))}` (or train --resume), replace it with "
                               "--overwrite, or choose another --out")
            if not out.is_dir() or (any(out.iterdir()) and not overwrite):
                raise RunError(f"--out {out} exists and is not an empty directory; "
                               "choose a new directory")
        _mkdir(out, parents=True, exist_ok=True)
        run_dir = out
    else:
        root = runs_root()
        _mkdir(root, parents=True, exist_ok=True)
        used = [int(m.group(1)) for p in root.iterdir() if (m := _INDEX_RE.match(p.name))]
        index = max(used, default=0) + 1
        while True:  # another process may take a number between our scan and our mkdir
            name = Path(config.dataset).stem if "/" in config.dataset else config.dataset
            run_dir = root / f"{index:04d}-{_slug(name)}-{_slug(config.arch)}"
            try:
                _mkdir(run_dir, parents=False, exist_ok=False)
                break
            except FileExistsError:
                index += 1
    _mkdir(run_dir / CKPT_DIR, exist_ok=True)
    _mkdir(run_dir / SAMPLES, exist_ok=True)
    return run_dir


def read_config(run_dir: Path) -> Config:
    """The config a run was started with (its config.json)."""
    path = run_dir / CONFIG
    try:
        return Config.from_dict(json.loads(path.read_text(encoding="utf-8")), source=str(path))
    except FileNotFoundError:
        raise RunError(f"{run_dir} has no {CONFIG}; it is not a ganctl run") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as e:
        raise RunError(f"{path} is damaged ({e}); resume from a checkpoint file instead") from None


def write_config(run_dir: Path, config: Config) -> None:
    atomic_write(run_dir / CONFIG, (json.dumps(config.to_dict(), indent=2) + "\n").encode())


def trim_metrics(run_dir: Path, step: int) -> None:
    """Drop step records logged after `step`: a resumed or rolled-back run replays those steps and
    logs them again. Event records (rollbacks) are history and stay."""
    path = run_dir / METRICS
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run_dir)  # lines cut short by a crash are dropped
            if "event" in r or (isinstance(r.get("step"), int) and r["step"] <= step)]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept).encode())

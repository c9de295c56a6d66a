"""Making a run directory (the next free number under the runs root, claimed by mkdir; the
marker that makes it a run) and taking it apart: --overwrite, a start that failed, a killed
writer's temp files. Only files ganctl wrote are ever deleted, in folders of its own.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from ganctl.config import Config
from ganctl.errors import RunError
from ganctl.fsutil import atomic_write, nearest_existing
from ganctl.rundir.layout import (
    CKPT_DIR,
    CONFIG,
    CURVES,
    DATA_REPORT,
    LOCK,
    MARKER,
    METRICS,
    SAMPLES,
    TENSORBOARD,
    WANDB_ID,
    is_run_dir,
    runs_root,
)

_INDEX_RE = re.compile(r"^(\d+)-")
# what ganctl writes in samples/ and checkpoints/ (temp files: fsutil.temp_path of those names)
_OWN_IN = {
    "samples": re.compile(r"^(\.step-\d{9}\.png\.tmp-\d+|step-\d{9}\.png)$"),
    "checkpoints": re.compile(r"^(\.(step-\d{9}\.safetensors|latest|best)\.tmp-\d+"
                              r"|step-\d{9}\.safetensors|latest|best)$"),
    TENSORBOARD: re.compile(r"^events\.out\.tfevents\..+$"),
    ".": re.compile(r"^\.curves\.png\.tmp-\d+$"),  # a redraw cut short
}
_TEMP_RE = re.compile(r"^\..*\.tmp-\d+$")


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


def _own_files(run_dir: Path) -> list[Path]:
    """The files ganctl writes in a run directory, as they are there now: its own names only
    (a user's step-final.safetensors or notes in samples/ are not among them)."""
    found = []
    for sub, own in _OWN_IN.items():
        if sub == "." or _real_dir(run_dir / sub):  # a linked folder is another's (shared logs)
            found += sorted(p for p in (run_dir / sub).iterdir() if own.match(p.name))
    # the marker last: until it goes, the folder is still a run
    found += [run_dir / name for name in (CURVES, WANDB_ID, DATA_REPORT, METRICS, CONFIG, MARKER)
              if (run_dir / name).exists() or (run_dir / name).is_symlink()]
    return found


def remove_run(run_dir: Path) -> list[Path]:
    """Delete what ganctl wrote in a run directory (asked for by --overwrite); other files stay.
    Everything is checked before anything is deleted: a name ganctl uses that holds a folder
    (or a checkpoints/ that is a file) stops it with nothing removed. The files are first moved
    aside into one folder; if any cannot be moved (permissions, an immutable file), those moved
    go back and nothing is lost. Only then is the folder deleted."""
    paths = _own_files(run_dir)
    odd = [p for p in paths if p.is_dir() and not p.is_symlink()] + [
        run_dir / sub for sub in (SAMPLES, CKPT_DIR, TENSORBOARD)  # a file, or a link
        if os.path.lexists(run_dir / sub) and not _real_dir(run_dir / sub)]
    if odd:
        raise RunError(f"cannot replace the run in {run_dir}: {odd[0]} is not what ganctl wrote "
                       "there; move it away or choose another --out")
    trash = run_dir / f".ganctl-removing-{os.getpid()}"  # a name no one else uses
    _mkdir(trash, exist_ok=False)
    moved: list[tuple[Path, Path]] = []
    try:
        for i, path in enumerate(paths):
            aside = trash / f"{i:06d}-{path.name}"
            path.rename(aside)
            moved.append((path, aside))
    except OSError as e:
        for path, aside in reversed(moved):
            aside.rename(path)
        _clear_trash(trash)
        raise RunError(f"cannot remove {e.filename or run_dir} ({e.strerror}); nothing was "
                       "deleted: fix its permissions or choose another --out") from None
    _clear_trash(trash)
    for sub in (SAMPLES, CKPT_DIR, TENSORBOARD):
        try:
            (run_dir / sub).rmdir()
        except OSError:  # absent, or holds files that are not ganctl's
            pass
    return paths


def _clear_trash(trash: Path) -> None:
    if trash.is_dir() and not trash.is_symlink():
        for path in trash.iterdir():
            path.unlink(missing_ok=True)
        trash.rmdir()


def abandon(run_dir: Path, made: bool) -> None:
    """Undo a run directory that failed before training began (a full disk, ...): its files,
    its lock and, if this process made it, the folder itself, so the name can be used again."""
    remove_run(run_dir)
    (run_dir / LOCK).unlink(missing_ok=True)
    if made:
        try:
            run_dir.rmdir()
        except OSError:  # something else appeared in it: leave it
            pass


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
            if not out.is_dir() or (any(p.name != LOCK for p in out.iterdir()) and not overwrite):
                raise RunError(f"--out {out} exists and is not an empty directory (nor a ganctl "
                               "run); choose a new directory")
        _mkdir(out, parents=True, exist_ok=True)
        run_dir = out
    else:
        root = runs_root()
        if (there := nearest_existing(root)) is not None and not there.is_dir():
            raise RunError(f"the runs folder {root} cannot be made: {there} is a file, not a folder "
                           "(GANCTL_RUNS moves ./runs); move it, or give --out DIR")
        _mkdir(root, parents=True, exist_ok=True)
        used = [int(m.group(1)) for p in root.iterdir() if (m := _INDEX_RE.match(p.name))]
        index = max(used, default=0) + 1
        name = Path(config.dataset).stem if "/" in config.dataset else config.dataset
        while True:  # another process may take a number between our scan and our mkdir
            run_dir = root / f"{index:04d}-{_slug(name)}-{_slug(config.arch)}"
            try:
                _mkdir(run_dir, parents=False, exist_ok=False)
                break
            except FileExistsError:
                index += 1
    atomic_write(run_dir / MARKER, b"a ganctl run directory: see config.json\n")
    _mkdir(run_dir / CKPT_DIR, exist_ok=True)
    _mkdir(run_dir / SAMPLES, exist_ok=True)
    return run_dir


def _real_dir(path: Path) -> bool:
    """A folder itself, not a link to one: ganctl removes files only in its own folders."""
    return path.is_dir() and not path.is_symlink()


def remove_temp_files(run_dir: Path) -> None:
    """Temp files a killed writer left behind: never a checkpoint, only half of one."""
    for sub, own in _OWN_IN.items():
        if _real_dir(run_dir / sub) or sub == ".":
            for path in (run_dir / sub).iterdir():
                if own.match(path.name) and _TEMP_RE.match(path.name):
                    path.unlink(missing_ok=True)

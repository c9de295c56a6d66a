"""Run directories: ./runs/<NNNN>-<dataset>-<arch>/ with config.json, metrics.jsonl, samples/
and checkpoints/ (with its `latest` pointer); the lock that keeps one process per run; and
finding the checkpoint a command was pointed at. Only files ganctl wrote are ever deleted:
pruned checkpoints, and a run's own files on --overwrite. The checkpoint file format itself is
checkpoint.py's.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shlex
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ganctl import fsutil, metricsfile
from ganctl.checkpoint import SUFFIX, Header, open_checkpoint, read_header, read_metadata
from ganctl.config import Config
from ganctl.errors import CheckpointError, GanctlError, RunError
from ganctl.fsutil import atomic_write, nearest_existing

MARKER = ".ganctl-run"  # written first in every run directory: what makes a folder a run
CONFIG = "config.json"
DATA_REPORT = "data_report.json"
METRICS = metricsfile.FILE
SAMPLES = "samples"
CKPT_DIR = "checkpoints"
LATEST = "latest"  # a text file in CKPT_DIR naming the newest complete checkpoint
BEST = "best"  # ... naming the checkpoint with the lowest FID so far (never pruned)
POINTERS = (LATEST, BEST)
LOCK = ".lock"
CURVES = "curves.png"  # redrawn at sample steps (ganctl.plot)
WANDB_ID = "wandb_id.txt"  # the run's Weights & Biases id, with --wandb: a resume continues it
TENSORBOARD = "tensorboard"  # event files, with --tensorboard
_INDEX_RE = re.compile(r"^(\d+)-")
_STEP_RE = re.compile(r"^step-(\d{9})\.safetensors$")  # exactly what checkpoint_name writes
# what ganctl writes in samples/ and checkpoints/ (temp files: fsutil.temp_path of those names)
_OWN_IN = {
    "samples": re.compile(r"^(\.step-\d{9}\.png\.tmp-\d+|step-\d{9}\.png)$"),
    "checkpoints": re.compile(r"^(\.(step-\d{9}\.safetensors|latest|best)\.tmp-\d+"
                              r"|step-\d{9}\.safetensors|latest|best)$"),
    TENSORBOARD: re.compile(r"^events\.out\.tfevents\..+$"),
    ".": re.compile(r"^\.curves\.png\.tmp-\d+$"),  # a redraw cut short
}
_TEMP_RE = re.compile(r"^\..*\.tmp-\d+$")
MAX_RUN_FILE = 1 << 20  # config.json and pointers are small; a larger one is not ganctl's
# the keys every ganctl config.json has held since the first version: a run made before the
# marker existed is recognised by them (and its checkpoints/), not by any config.json
_LEGACY_KEYS = frozenset({"dataset", "resolution", "channels", "z_dim", "g_width", "d_width",
                          "loss", "lr_g", "lr_d", "batch_size", "steps", "seed", "ckpt_every"})


def runs_root() -> Path:
    return Path(os.environ.get("GANCTL_RUNS", "runs"))


def _stem(step: int) -> str:
    return f"step-{step:09d}"


def checkpoint_name(step: int) -> str:
    return _stem(step) + SUFFIX


def sample_name(step: int) -> str:
    return _stem(step) + ".png"


# --- creating and removing ------------------------------------------------------------------------

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


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock: a second process training the same run is refused, not let loose on
    its checkpoints (the lock goes with the process, however it ends)."""
    try:
        handle = open(run_dir / LOCK, "a+")
    except OSError as e:
        raise RunError(f"cannot lock {run_dir}: {e.strerror}; the run directory must be "
                       "writable (copy the run elsewhere to continue it)") from None
    try:
        _take(handle)
    except OSError:
        handle.close()
        raise RunError(f"{run_dir} is being trained by another ganctl process; wait for it to end "
                       "or stop it first") from None
    try:
        yield
    finally:
        handle.close()


LOCK_GRACE = 0.5  # seconds a start waits for the lock: `ganctl runs` (is_locked) holds it for
# microseconds while it looks, which must not turn a start away; a trainer holds it for hours


def _take(handle: IO[str]) -> None:
    """The exclusive lock on an open lock file, retried for LOCK_GRACE seconds while it is held."""
    deadline = time.monotonic() + LOCK_GRACE
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def is_locked(run_dir: Path) -> bool | None:
    """Whether a process holds the run's lock (is training it now); None when that cannot be
    told (the lock file is unreadable, or a link). A non-blocking try for a shared lock: two
    listings never disturb each other, and the file is opened read-only, so looking creates
    nothing and needs no write permission. No lock file: never trained, so not running."""
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW
                     | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no locks on this filesystem (some network mounts)
        return None
    finally:
        os.close(fd)  # lets go of the shared lock at once
    return False


def is_run_dir(path: Path) -> bool:
    """A folder ganctl made a run of: it holds the marker, or (runs of versions before the
    marker) a checkpoints/ folder beside a config.json that holds every key those versions
    wrote and passes as a ganctl config. A folder with some other config.json is not a run."""
    if (path / MARKER).is_file():
        return True
    if not (path / CKPT_DIR).is_dir():
        return False
    try:
        values = json.loads(fsutil.read_regular(path / CONFIG, MAX_RUN_FILE).decode("utf-8"))
        Config.from_dict(values)
    except (OSError, ValueError, TypeError, RecursionError, GanctlError):
        return False
    return _LEGACY_KEYS <= values.keys()


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


# --- the run's files ---------------------------------------------------------------------------------

def read_config(run_dir: Path) -> Config:
    """The config a run was started with (its config.json)."""
    path = run_dir / CONFIG
    try:
        text = fsutil.read_regular(path, MAX_RUN_FILE).decode("utf-8")
        return Config.from_dict(json.loads(text), source=str(path))
    except FileNotFoundError:
        raise RunError(f"{run_dir} has no {CONFIG}; it is not a ganctl run") from None
    except (OSError, UnicodeDecodeError, ValueError, TypeError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else e
        raise RunError(f"{path} is damaged ({why}); resume from a checkpoint file instead") from None


def write_json(path: Path, value: Any, indent: int = 1) -> None:
    atomic_write(path, (json.dumps(value, indent=indent) + "\n").encode())


def write_config(run_dir: Path, config: Config) -> None:
    write_json(run_dir / CONFIG, config.to_dict(), indent=2)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; damaged lines are left out (metricsfile.read)."""
    return metricsfile.read(run_dir)[0]


def trim_metrics(run_dir: Path, step: int) -> int:
    """metricsfile.trim: the records after `step` (replayed on resume or rollback) dropped."""
    return metricsfile.trim(run_dir, step)


# --- checkpoints in a run ---------------------------------------------------------------------------

def set_pointer(run_dir: Path, pointer: str, ckpt: Path) -> None:
    """Point `latest` or `best` at a checkpoint, once that file is complete."""
    atomic_write(run_dir / CKPT_DIR / pointer, (ckpt.name + "\n").encode())


def pointed(run_dir: Path, pointer: str) -> Path | None:
    """The existing checkpoint `latest` or `best` names; None if absent or damaged."""
    ckpt_dir = run_dir / CKPT_DIR
    try:  # a FIFO or a huge file named like the pointer is not read
        name = fsutil.read_regular(ckpt_dir / pointer, 4096).decode("utf-8", errors="replace").strip()
    except OSError:
        return None
    return ckpt_dir / name if _STEP_RE.match(name) and (ckpt_dir / name).is_file() else None


@dataclass(frozen=True)
class Best:
    """A run's best score: its lowest FID, the step that reached it and (when `best` names it)
    the checkpoint."""

    fid: float
    step: int
    checkpoint: Path | None


def best_score(run_dir: Path, evaluations: Iterable[tuple[int, float]] | None = None) -> Best | None:
    """The one answer to "what is this run's best FID" (`ganctl runs` and `inspect` alike): the
    FID of the checkpoint `best` names, else the lowest of the run's evaluations ((step, FID)
    pairs; by default those metrics.jsonl records). None before any evaluation."""
    ckpt = pointed(run_dir, BEST)
    if ckpt is not None:
        try:
            header = read_metadata(ckpt)
        except CheckpointError:
            header = None
        if header is not None and isinstance(header.fid, float) and math.isfinite(header.fid):
            return Best(header.fid, header.step, ckpt)
    if evaluations is None:
        evaluations = [(r["step"], r["fid"]) for r in read_metrics(run_dir)
                       if r.get("event") == "eval" and type(r.get("step")) is int
                       and isinstance(r.get("fid"), (int, float)) and not isinstance(r["fid"], bool)]
    finite = [(step, float(fid)) for step, fid in evaluations if math.isfinite(fid)]
    if not finite:
        return None
    step, fid = min(finite, key=lambda pair: pair[1])
    return Best(fid, step, None)


def _step_of(path: Path) -> int:
    m = _STEP_RE.match(path.name)
    return int(m.group(1)) if m else -1


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Step checkpoints in `ckpt_dir`, oldest step first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir()
             if (m := _STEP_RE.match(p.name)) and p.is_file()]  # a FIFO so named is skipped
    return [p for _, p in sorted(found)]


def prune(ckpt_dir: Path, keep: int, current: int) -> list[Path]:
    """Delete step checkpoints older than `current` (the one just written) beyond the newest
    `keep` up to it (keep=0: delete none); the one `best` names is never deleted (nor counted).
    Files of later steps, left by a run resumed from an older checkpoint, are not counted and
    not touched: the run overwrites them as it gets there."""
    if keep <= 0:
        return []
    best = pointed(ckpt_dir.parent, BEST)
    upto = [p for p in list_checkpoints(ckpt_dir) if _step_of(p) <= current and p != best]
    old = upto[:-keep]
    for path in old:
        path.unlink(missing_ok=True)
    return old


def latest_in_run(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names, else the highest step file; None if the run has none."""
    if (named := pointed(run_dir, LATEST)) is not None:  # a damaged pointer is ignored
        return named
    found = list_checkpoints(run_dir / CKPT_DIR)
    return found[-1] if found else None


RESCANS = 20  # listings of a run whose checkpoints a trainer prunes while we read them


def newest_valid(run_dir: Path, say: Callable[[str], None], verify: bool = True) -> Header:
    """The newest checkpoint of a run that verifies, saying which newer ones were passed over.
    A checkpoint that vanishes while we look (a running trainer pruned it: --keep) is no damage:
    the run is listed again, up to RESCANS times."""
    tried: set[Path] = set()
    for _ in range(RESCANS):
        candidates = []
        if (named := latest_in_run(run_dir)) is not None:
            candidates.append(named)
        candidates += [p for p in reversed(list_checkpoints(run_dir / CKPT_DIR))
                       if p not in candidates]
        vanished = False
        for path in (p for p in candidates if p not in tried):
            tried.add(path)
            try:
                return open_checkpoint(path) if verify else read_header(path)
            except CheckpointError as e:
                if not os.path.lexists(path):
                    vanished = True
                    break  # newer ones have come: list again
                say(f"skipping {path.name}: {e}")
        if not vanished:
            break
    raise CheckpointError(f"run {run_dir} has no valid checkpoint" + (
        " (every one failed verification)" if tried else " yet"))


def newest_run(root: Path) -> Path:
    """The run under `root` whose newest checkpoint file was written last."""
    newest: dict[Path, int] = {}
    if root.is_dir():
        for run_dir in root.iterdir():
            files = list_checkpoints(run_dir / CKPT_DIR) if run_dir.is_dir() else []
            if files:
                newest[run_dir] = max(p.stat().st_mtime_ns for p in files)
    if not newest:
        raise CheckpointError(f"no checkpoints found under {root}/; train one with "
                              "`ganctl train` or pass a checkpoint path")
    return max(newest, key=newest.__getitem__)


def _best(run_dir: Path, verify: bool) -> Header:
    ckpt = pointed(run_dir, BEST)
    if ckpt is None:
        raise CheckpointError(f"run {run_dir} has no best checkpoint (it is set by evaluations "
                              "during training: train --eval-every N); use latest")
    return open_checkpoint(ckpt) if verify else read_header(ckpt)


def locate(target: str | Path | None, say: Callable[[str], None], verify: bool = True) -> Header:
    """The verified checkpoint a command was pointed at: a file as given; for a run directory
    (or, with no target, the newest run under the runs root) its newest checkpoint that verifies;
    `best` (a run's checkpoints/best, or the word alone for the newest run) the one with the
    lowest FID; `latest` likewise. With verify=False only headers are read (and checked)."""
    if target is None:
        return newest_valid(newest_run(runs_root()), say, verify)
    path = Path(target)
    if str(target) in POINTERS and not path.exists():  # the word alone: the newest run's
        run_dir = newest_run(runs_root())
        return _best(run_dir, verify) if str(target) == BEST else newest_valid(run_dir, say, verify)
    if path.name == BEST and path.parent.name == CKPT_DIR:
        return _best(path.parent.parent, verify)
    if path.name == LATEST and path.parent.name == CKPT_DIR:  # the pointer: its run
        path = path.parent.parent
    elif path.name == CKPT_DIR and path.is_dir():  # a run's checkpoints/: the run
        path = path.parent
    if path.is_dir():
        if is_run_dir(path):
            return newest_valid(path, say, verify)
        raise CheckpointError(f"{path} is a directory but not a ganctl run (no {CKPT_DIR}/ "
                              f"or {CONFIG} in it)")
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a .safetensors checkpoint or a run "
                              "directory")
    return open_checkpoint(path) if verify else read_header(path)


def run_dir_of(ckpt: Path) -> Path:
    """The run directory a checkpoint file belongs to (<run>/checkpoints/<file>)."""
    if ckpt.parent.name != CKPT_DIR:
        raise CheckpointError(f"{ckpt} is not inside a run's {CKPT_DIR}/ directory; "
                              "resume needs the run directory around it")
    return ckpt.parent.parent

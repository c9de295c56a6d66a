"""The checkpoints in a run: the `latest` and `best` pointers, the run's best score, listing
and pruning step files, and finding the checkpoint a command was pointed at (a file, a run,
`latest`, `best`, or the newest run's). The checkpoint file format itself is checkpoint's:
this module reads through it, never the reverse.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ganctl import fsutil
from ganctl.checkpoint import Header, open_checkpoint, read_header, read_metadata
from ganctl.errors import CheckpointError
from ganctl.fsutil import atomic_write
from ganctl.rundir.layout import (
    BEST,
    CKPT_DIR,
    CONFIG,
    LATEST,
    POINTERS,
    STEP_FILE,
    is_run_dir,
    read_metrics,
    runs_root,
)


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
    return ckpt_dir / name if STEP_FILE.match(name) and (ckpt_dir / name).is_file() else None


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
    m = STEP_FILE.match(path.name)
    return int(m.group(1)) if m else -1


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Step checkpoints in `ckpt_dir`, oldest step first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir()
             if (m := STEP_FILE.match(p.name)) and p.is_file()]  # a FIFO so named is skipped
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

"""`ganctl runs`: the runs under a root, each with its state, progress, last losses and best FID.

Everything is read cheaply, so that hundreds of runs list in well under a second: config.json,
the header (never the tensors) of the newest checkpoint and of `best`, the tail of metrics.jsonl
and one stat per file for the size. Nothing found there is trusted: a damaged run is listed as
"broken" with the reason, a folder that is not a run is passed over, links are never followed,
and nothing is written (the lock is probed read-only).

A run's status, first match wins:
  running   another process holds the run's lock (it is training now)
  broken    config.json is unreadable, or no checkpoint has a readable header
  new       no checkpoint yet (it stopped, or is about to start, before the first one)
  diverged  the last "diverged" event of metrics.jsonl has no training after it
  complete  the newest checkpoint is at the run's last step
  stopped   the newest checkpoint is before it: `ganctl resume` continues from there
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ganctl import fsutil, rundir
from ganctl.checkpoint import MAX_HEADER_BYTES, Header
from ganctl.config import Config
from ganctl.data.cache import human_bytes
from ganctl.errors import CheckpointError, RunError

STATUSES = ("running", "broken", "new", "diverged", "complete", "stopped")
FIELDS = ("id", "path", "status", "problem", "dataset", "arch", "resolution", "step", "steps",
          "logged_step", "losses", "best_fid", "best_step", "checkpoint", "updated", "bytes")
SETTINGS = ("dataset", "arch", "resolution")  # of a run's config, shown in the listing
TAIL_BYTES = 64 << 10  # of metrics.jsonl: hundreds of records, far more than the last few needed


def list_runs(root: Path | None = None) -> list[dict[str, Any]]:
    """The runs directly under `root` (default: the runs root, ./runs or env GANCTL_RUNS), by id;
    `root` may also be one run. An absent root has no runs. Each run is a JSON-ready dict:
    id, path, status, problem, dataset, arch, resolution, step (of the newest checkpoint: where
    resume continues), steps, logged_step (of the last metrics record), losses, best_fid,
    best_step, checkpoint, updated (ISO 8601, local time with offset), bytes."""
    root = rundir.runs_root() if root is None else Path(root)
    dirs = [root] if rundir.is_run_dir(root) else _run_dirs(root)
    return [describe(run_dir) for run_dir in dirs]


def _run_dirs(root: Path) -> list[Path]:
    """The folders directly in `root` that are runs; a link (to a run or anywhere) is passed
    over, so a listing never leaves the root."""
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise RunError(f"{root} is not a directory; pass the folder that holds the runs") from None
    except OSError as e:
        raise RunError(f"cannot list {root}: {e.strerror}") from None
    return sorted((Path(e.path) for e in entries if _is_run(e)), key=lambda p: p.name)


def _is_run(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False) and rundir.is_run_dir(Path(entry.path))
    except OSError:  # a folder we may not look into: whose it is cannot be told
        return False


# --- one run ------------------------------------------------------------------------------------

def describe(run_dir: Path) -> dict[str, Any]:
    """One run as list_runs shows it (see there)."""
    try:
        return _describe(run_dir)
    except OSError as e:  # a folder we may not read (permissions), or one removed as we look
        fields = dict.fromkeys(FIELDS)
        return {**fields, "id": run_dir.name, "path": str(run_dir), "status": "broken",
                "problem": f"cannot read {e.filename or run_dir}: {e.strerror or e}",
                "losses": {}, "bytes": 0}


def _describe(run_dir: Path) -> dict[str, Any]:
    running = rundir.is_locked(run_dir) is True
    config, problem = _config(run_dir)
    header, ckpt_problem = _newest_header(run_dir)
    tail = _tail(run_dir / rundir.METRICS)
    size, updated = _usage(run_dir)
    # a run being trained wrote config.json when it started: its steps are the goal now; else
    # the newest checkpoint's, which are what `ganctl resume` (without --steps) trains to
    steps = _steps(header) if header is not None and not running else None
    if steps is None and config is not None:
        steps = config.steps
    settings = _settings(config, header)
    best_fid, best_step = _best(run_dir, tail)
    return {
        "id": run_dir.name, "path": str(run_dir),
        "status": _status(running, problem or ckpt_problem, header, steps, tail),
        "problem": problem or ckpt_problem,
        **settings,
        "step": header.step if header is not None else None, "steps": steps,
        "logged_step": tail.last.get("step") if tail.last else None,
        "losses": _losses(tail.last),
        "best_fid": best_fid, "best_step": best_step,
        "checkpoint": str(header.path) if header is not None else None,
        "updated": _iso(updated), "bytes": size,
    }


def _status(running: bool, problem: str | None, header: Header | None, steps: int | None,
            tail: _Tail) -> str:
    if running:
        return "running"
    if problem is not None:
        return "broken"
    if header is None:
        return "new"
    if tail.diverged is not None and not _saved_after(header, tail.diverged):
        return "diverged"
    return "complete" if steps is not None and header.step >= steps else "stopped"


def _saved_after(header: Header, event: dict[str, Any]) -> bool:
    """Whether the checkpoint was written after the event: a run resumed after it diverged and
    stopped before it logged a record (ganctl.created is whole seconds, so a checkpoint within
    the event's second counts as before it: the loop saves none after it gives up)."""
    try:
        created = datetime.fromisoformat(header.metadata["ganctl.created"]).timestamp()
        return created > float(event["time"])
    except (KeyError, ValueError, TypeError):
        return False


def _config(run_dir: Path) -> tuple[Config | None, str | None]:
    try:
        return rundir.read_config(run_dir), None
    except RunError as e:
        return None, str(e)


def _newest_header(run_dir: Path) -> tuple[Header | None, str | None]:
    """The header of the newest checkpoint whose header reads (the one `latest` names, else the
    highest step; as resume picks, without verifying the data), or why there is none when
    checkpoints exist. A file pruned while we look is passed over like a damaged one."""
    named = rundir.latest_in_run(run_dir)
    found = rundir.list_checkpoints(run_dir / rundir.CKPT_DIR)
    candidates = ([named] if named is not None else []) + [p for p in reversed(found) if p != named]
    why = None
    for path in candidates:
        try:
            return _read_metadata(path), None
        except CheckpointError as e:
            why = why or str(e)
    return None, (f"no checkpoint is readable ({why})" if why else None)


def _read_metadata(path: Path) -> Header:
    """A checkpoint's header, its metadata checked as checkpoint.read_header checks it, but its
    tensor entries neither checked nor kept (tensors is empty): a quarter of the time on a
    ResNet's 500 entries, which a listing of hundreds of runs needs. Never to load from."""
    try:
        with fsutil.open_regular(path) as f:  # a FIFO named like a checkpoint is not waited on
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 <= n <= min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{path} is truncated or not a safetensors file")
            header = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"{path} has a corrupted header (not JSON)") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or "ganctl.schema" not in metadata:
        raise CheckpointError(f"{path} is not a ganctl checkpoint")
    if not all(isinstance(v, str) for v in metadata.values()):  # safetensors' metadata is text
        raise CheckpointError(f"{path} has damaged ganctl metadata")
    try:
        int(metadata["ganctl.step"])
        if not isinstance(json.loads(metadata["ganctl.config"]), dict):
            raise ValueError
    except (KeyError, ValueError, TypeError, RecursionError):
        raise CheckpointError(f"{path} has damaged ganctl metadata") from None
    return Header(path, metadata, {}, size, 8 + n)


def _steps(header: Header) -> int | None:
    steps = header.config.get("steps")  # _read_metadata checked the config is a JSON object
    return steps if type(steps) is int else None


def _settings(config: Config | None, header: Header | None) -> dict[str, Any]:
    """dataset, arch and resolution: from config.json, else from the checkpoint's copy of it."""
    if config is not None:
        values: dict[str, Any] = {key: getattr(config, key) for key in SETTINGS}
    else:
        values = header.config if header is not None else {}
    return {key: values.get(key) for key in SETTINGS}


def _best(run_dir: Path, tail: _Tail) -> tuple[float | None, int | None]:
    """The FID of the checkpoint `best` names (training's evaluations), else the lowest FID of
    the eval events in the tail of metrics.jsonl (`ganctl eval` of the run's checkpoints)."""
    ckpt = rundir.pointed(run_dir, rundir.BEST)
    if ckpt is not None:
        try:
            header = _read_metadata(ckpt)
            if header.fid is not None:
                return header.fid, header.step
        except CheckpointError:
            pass
    if not tail.fids:
        return None, None
    step, fid = min(tail.fids, key=lambda pair: pair[1])
    return fid, step


def _losses(record: dict[str, Any] | None) -> dict[str, Any]:
    """The record's losses (a non-finite one is text, as the loop writes it)."""
    if record is None:
        return {}
    return {k: v for k, v in record.items()
            if k.startswith("loss") and isinstance(v, (int, float, str)) and not isinstance(v, bool)}


# --- metrics.jsonl's tail -----------------------------------------------------------------------

@dataclass
class _Tail:
    last: dict[str, Any] | None = None  # the last training record (one without "event")
    diverged: dict[str, Any] | None = None  # the last "diverged" event, if no training follows it
    fids: list[tuple[int, float]] = field(default_factory=list)  # (step, fid) of eval events


def _tail(path: Path) -> _Tail:
    """The records of the last TAIL_BYTES of metrics.jsonl, in order. A run that diverged ends
    with the event (rollbacks may precede it; `ganctl eval` events may follow); a run resumed
    after it logs training records after it: reading the tail is enough to tell."""
    tail = _Tail()
    for record in _tail_records(path):
        event = record.get("event")
        if event is None:
            if isinstance(record.get("step"), int):
                tail.last, tail.diverged = record, None
        elif event == "diverged":
            tail.diverged = record
        elif event == "eval" and _finite(record.get("fid")) and isinstance(record.get("step"), int):
            tail.fids.append((record["step"], float(record["fid"])))
    return tail


def _tail_records(path: Path) -> list[dict[str, Any]]:
    try:
        with fsutil.open_regular(path) as f:  # a FIFO in its place is not waited on
            start = max(0, os.fstat(f.fileno()).st_size - TAIL_BYTES)
            f.seek(start)
            raw = f.read(TAIL_BYTES)
    except OSError:
        return []
    lines = raw.split(b"\n")[1 if start else 0:]  # the first line of a tail is cut short
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, ValueError, RecursionError):
            continue  # blank, or cut short by a crash: read_metrics skips these too
        if isinstance(record, dict):
            records.append(record)
    return records


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- size and time --------------------------------------------------------------------------------

def _usage(run_dir: Path) -> tuple[int, float | None]:
    """(bytes of the run's regular files, the newest one's mtime), walking its folders without
    following links (a link's target is not the run's, and a link loop would never end)."""
    total, newest = 0, None
    stack = [run_dir]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue  # unreadable, or removed meanwhile
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    total += st.st_size
                    newest = st.st_mtime if newest is None else max(newest, st.st_mtime)
            except OSError:  # a checkpoint pruned while we looked
                continue
    return total, newest


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


# --- the human table --------------------------------------------------------------------------------

COLUMNS = ("ID", "STATUS", "DATASET", "ARCH", "RES", "STEP", "LOSSES", "BEST FID", "UPDATED", "SIZE")
RIGHT = frozenset({"RES", "STEP", "BEST FID", "SIZE"})


def format_runs(runs: list[dict[str, Any]], root: Path | None = None) -> str:
    """list_runs' result as an aligned table, one run a line, then a line for each broken run
    saying why; with no runs, a sentence saying where none were found."""
    if not runs:
        where = rundir.runs_root() if root is None else root
        return f"no runs under {where}/; start one with `ganctl train`"
    rows = [COLUMNS, *(_row(run) for run in runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(w) if name in RIGHT else cell.ljust(w)
                       for name, cell, w in zip(COLUMNS, row, widths, strict=True)).rstrip()
             for row in rows]
    lines += [f"{run['id']}: {run['problem']}" for run in runs if run.get("problem")]
    return "\n".join(lines)


def _row(run: dict[str, Any]) -> tuple[str, ...]:
    step = run["step"]
    if run["status"] == "running" and run["logged_step"] is not None:
        step = max(step or 0, run["logged_step"])  # its progress, past its last checkpoint
    best = (f"{run['best_fid']:.2f} @{run['best_step']}" if run["best_fid"] is not None else "-")
    return (run["id"], run["status"], _short(run["dataset"]), str(run["arch"] or "-"),
            str(run["resolution"] or "-"),
            f"{'-' if step is None else step}/{'-' if run['steps'] is None else run['steps']}",
            _format_losses(run["losses"]) or "-", best, _local(run["updated"]),
            human_bytes(run["bytes"]))


def _short(dataset: Any) -> str:
    """A dataset given as a path shows as its last part (the run id does the same)."""
    if not isinstance(dataset, str) or not dataset:
        return "-"
    return Path(dataset).name if "/" in dataset else dataset


def _format_losses(losses: dict[str, Any]) -> str:
    """`D 1.089 G 0.888` from loss_D and loss_G (a name without the prefix as it is)."""
    parts = []
    for name, value in losses.items():
        label = name.removeprefix("loss_") if name != "loss" else name
        parts.append(f"{label} {value:.3f}" if isinstance(value, float | int) else f"{label} {value}")
    return " ".join(parts)


def _local(iso: str | None) -> str:
    """`2026-11-28 07:12` in this machine's time zone."""
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M") if iso else "-"

"""`ganctl runs`: the runs under a root, each with its state, progress, last losses and best FID.

Everything is read cheaply, so that hundreds of runs list in well under a second: config.json,
the header (never the tensors) of the newest checkpoint and of `best`, the tail of metrics.jsonl
and one stat per file for the size. Nothing found there is trusted: a damaged run is listed as
"broken" with the reason, a folder that is not a run is passed over, links are never followed,
and nothing is written (the lock is probed read-only). Whatever one run holds, it never stops
the listing of the others: what cannot be read or used makes that run "broken", with the
reason (naming the file) as its problem.

A run's status, first match wins:
  running   another process holds the run's lock (it is training now)
  broken    config.json is unreadable or not a valid config, or no checkpoint has a readable
            header
  new       no checkpoint yet (it stopped, or is about to start, before the first one)
  diverged  the last "diverged" event of metrics.jsonl has no training after it
  complete  the newest checkpoint is at the run's last step
  stopped   the newest checkpoint is before it: `ganctl resume` continues from there
A run whose lock cannot be probed (an unreadable lock file, a filesystem without locks) keeps
the status its files give, and its problem says it may be running.

The result is strict JSON (RFC 8259): a non-finite number anywhere in it (a loss, a FID, a
setting from a checkpoint) is the text "nan", "inf" or "-inf", as the training loop writes it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ganctl import checkpoint, metricsfile, rundir
from ganctl.checkpoint import Header
from ganctl.config import PROJECTED, Config
from ganctl.errors import CheckpointError, GanctlError, RunError
from ganctl.fsutil import FileTooLarge, NotRegularFile
from ganctl.text import human_bytes, iso_time, minute, printable_cell

STATUSES = ("running", "broken", "new", "diverged", "complete", "stopped")
FIELDS = ("id", "path", "status", "problem", "dataset", "arch", "discriminator", "resolution",
          "step", "steps", "logged_step", "losses", "best_fid", "best_step", "checkpoint",
          "updated", "bytes")
# of a run's config, shown in the listing (the discriminator in the arch's column if projected)
SETTINGS = ("dataset", "arch", "discriminator", "resolution")
TAIL_BYTES = 64 << 10  # of metrics.jsonl: hundreds of records, far more than the last few needed
# what a run's own files may raise as we read them: never more than that run's "broken"
_RUN_ERRORS = (OSError, GanctlError, ValueError, TypeError, OverflowError, RecursionError)


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
        return _jsonable(_describe(run_dir))
    except _RUN_ERRORS as e:  # a folder we may not read (permissions), one removed as we look,
        # or anything else in it that this listing did not foresee: that run alone is broken
        if isinstance(e, OSError):
            why = f"cannot read {e.filename or run_dir}: {e.strerror or e}"
        else:
            why = f"cannot read {run_dir}: {_one_line(e)}"
        fields = dict.fromkeys(FIELDS)
        return {**fields, "id": run_dir.name, "path": str(run_dir), "status": "broken",
                "problem": why, "losses": {}, "bytes": 0}


def _describe(run_dir: Path) -> dict[str, Any]:
    locked = rundir.is_locked(run_dir)
    running = locked is True
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
    status = _status(running, problem or ckpt_problem, header, steps, tail)
    problems = [p for p in (problem, ckpt_problem) if p is not None]
    if locked is None:  # its files say what it was; whether a process trains it now is unknown
        problems.append(f"cannot probe its lock {run_dir / rundir.LOCK}: it may be running")
    return {
        "id": run_dir.name, "path": str(run_dir),
        "status": status,
        "problem": "; ".join(problems) or None,
        **settings,
        "step": header.step if header is not None else None, "steps": steps,
        "logged_step": tail.last.get("step") if tail.last else None,
        "losses": _losses(tail.last),
        "best_fid": best_fid, "best_step": best_step,
        "checkpoint": str(header.path) if header is not None else None,
        "updated": iso_time(updated), "bytes": size,
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
    """The run's config, or why there is none: config.json cannot be read (permissions: the
    file is fine, and no fault of the run), is damaged, or holds values this ganctl does not
    take (a wrong type, a key of a newer version)."""
    path = run_dir / rundir.CONFIG
    try:
        return rundir.read_config(run_dir), None
    except RunError as e:
        cause = e.__context__  # read_config says "damaged" for any OSError; a listing tells apart
        if isinstance(cause, OSError) and not isinstance(
                cause, FileNotFoundError | NotRegularFile | FileTooLarge):
            return None, f"cannot read {path}: {cause.strerror or cause}"
        return None, _one_line(e)
    except (GanctlError, ValueError, TypeError, OverflowError, RecursionError) as e:
        why = _one_line(e)
        return None, why if str(path) in why else f"{path} is not a valid config: {why}"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


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
            return checkpoint.read_metadata(path), None
        except CheckpointError as e:
            why = why or str(e)
    return None, (f"no checkpoint is readable ({why})" if why else None)


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
    """The run's best FID and its step (rundir.best_score; its evaluations from the tail)."""
    best = rundir.best_score(run_dir, tail.fids)
    return (None, None) if best is None else (best.fid, best.step)


def _losses(record: dict[str, Any] | None) -> dict[str, Any]:
    """The record's losses (a non-finite one is text, as the loop writes it: "nan", "inf")."""
    if record is None:
        return {}
    return {k: _jsonable(v) for k, v in record.items()
            if k.startswith("loss") and isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def _jsonable(value: Any) -> Any:
    """`value` with every non-finite float in it as text ("nan", "inf", "-inf"): json.dumps
    would write NaN and Infinity, which are not JSON (Python's json.loads accepts them in a
    file, so they can come from metrics.jsonl or a checkpoint's copy of the config)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


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
    for record in metricsfile.tail(path, TAIL_BYTES):
        event = record.get("event")
        if event is None:
            if _step(record.get("step")):
                tail.last, tail.diverged = record, None
        elif event == "diverged":
            tail.diverged = record
        elif event == "eval" and _finite(record.get("fid")) and _step(record.get("step")):
            tail.fids.append((record["step"], float(record["fid"])))
    return tail


def _step(value: Any) -> bool:
    return type(value) is int and value >= 0


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


# --- the human table --------------------------------------------------------------------------------

COLUMNS = ("ID", "STATUS", "DATASET", "ARCH", "RES", "STEP", "LOSSES", "BEST FID", "UPDATED", "SIZE")
RIGHT = frozenset({"RES", "STEP", "BEST FID", "SIZE"})
# longest cell of a column (longer ones end in "…"): one odd run must not widen every row
WIDEST = {"ID": 64, "LOSSES": 48}
WIDEST_OTHER = 32
PROBLEM_CHARS = 500  # of a broken run's line under the table


def format_runs(runs: list[dict[str, Any]], root: Path | None = None) -> str:
    """list_runs' result as an aligned table, one run a line, then a line for each run with a
    problem saying what it is; with no runs, a sentence saying where none were found. Every
    cell is one line of printable text (control characters escaped), of bounded width."""
    if not runs:
        where = rundir.runs_root() if root is None else root
        return printable_cell(f"no runs under {where}/; start one with `ganctl train`", 4096)
    rows = [COLUMNS, *(_row(run) for run in runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(w) if name in RIGHT else cell.ljust(w)
                       for name, cell, w in zip(COLUMNS, row, widths, strict=True)).rstrip()
             for row in rows]
    lines += [printable_cell(f"{run['id']}: {run['problem']}", PROBLEM_CHARS)
              for run in runs if run.get("problem")]
    return "\n".join(lines)


def _row(run: dict[str, Any]) -> tuple[str, ...]:
    step = run["step"]
    if run["status"] == "running" and _step(run["logged_step"]) and _step(step or 0):
        step = max(step or 0, run["logged_step"])  # its progress, past its last checkpoint
    best = (f"{_number(run['best_fid'], '.2f')} @{run['best_step']}"
            if run["best_fid"] is not None else "-")
    arch = f"{run['arch']}+projected" if run["arch"] and run["discriminator"] == PROJECTED \
        else run["arch"]
    cells = (run["id"], run["status"], _short(run["dataset"]), arch or "-",
             run["resolution"] or "-",
             f"{'-' if step is None else step}/{'-' if run['steps'] is None else run['steps']}",
             _format_losses(run["losses"]) or "-", best, minute(run["updated"]),
             human_bytes(run["bytes"]))
    return tuple(printable_cell(str(cell), WIDEST.get(name, WIDEST_OTHER))
                 for name, cell in zip(COLUMNS, cells, strict=True))


def _short(dataset: Any) -> str:
    """A dataset given as a path shows as its last part (the run id does the same)."""
    if not isinstance(dataset, str) or not dataset:
        return "-"
    return Path(dataset).name if "/" in dataset else dataset


def _format_losses(losses: dict[str, Any]) -> str:
    """`D 1.089 G 0.888` from loss_D and loss_G (a name without the prefix as it is), each
    value in 4 significant digits: 1.2e+308 and -1.8e+20 stay short."""
    parts = []
    for name, value in losses.items():
        label = name.removeprefix("loss_") if name != "loss" else name
        parts.append(f"{label} {_number(value, '.4g')}")
    return " ".join(parts)


def _number(value: Any, spec: str) -> str:
    """A number in `spec`; anything else (the text "nan") as it is."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return format(float(value), spec)
        except OverflowError:  # an integer past any float
            return "inf" if value > 0 else "-inf"
    return str(value)

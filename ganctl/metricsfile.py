"""metrics.jsonl, a run's records: one JSON object a line (steps' records, and events such as
evaluations and rollbacks), appended while training. The one module that writes and parses it:
append, read whole, read the tail, read incrementally (curves while training), trim.

A line cut short by a crash, bytes that are not UTF-8, or JSON that is not an object is damaged:
every reader skips it, and trim drops it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ganctl import fsutil
from ganctl.errors import RunError
from ganctl.fsutil import atomic_write, open_append

FILE = "metrics.jsonl"
REPLAYED_EVENTS = frozenset({"eval"})  # made again when a run replays their step


def parse(line: bytes) -> dict[str, Any] | None:
    """One line's record; None for a damaged (or blank) line."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def append(path: Path, record: dict[str, Any]) -> None:
    """Add a record (a FIFO in the file's place fails, never blocks)."""
    with open_append(path) as f:
        f.write((json.dumps(record) + "\n").encode())


def read(run_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """(records, damaged lines) of the run's file; none if it has none."""
    path = run_dir / FILE
    if not path.is_file():
        return [], 0
    try:
        raw = fsutil.read_regular(path)
    except fsutil.NotRegularFile:
        raise RunError(f"{path} is not a regular file (a FIFO?); move it away to continue the "
                       "run") from None
    records, damaged = [], 0
    for line in raw.splitlines():
        if line.strip():
            record = parse(line)
            if record is None:
                damaged += 1
            else:
                records.append(record)
    return records, damaged


def tail(path: Path, max_bytes: int) -> list[dict[str, Any]]:
    """The records of the file's last `max_bytes` (the first line there, cut short, left out);
    none if it cannot be read."""
    try:
        with fsutil.open_regular(path) as f:  # a FIFO in its place is not waited on
            start = max(0, os.fstat(f.fileno()).st_size - max_bytes)
            f.seek(start)
            raw = f.read(max_bytes)
    except OSError:
        return []
    lines = raw.split(b"\n")[1 if start else 0:]
    return [r for r in map(parse, lines) if r is not None]


class Reader:
    """Reads the records appended since its last call (a line being written waits for the next
    one); all of them again, with `restarted` set, when the file was replaced or cut."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._read: tuple[int, int] = (-1, 0)  # (inode, bytes) parsed so far

    def new_records(self) -> tuple[list[dict[str, Any]], bool]:
        """(the records added since the last call, whether the file started again)."""
        try:
            f = fsutil.open_regular(self.path)
        except FileNotFoundError:
            return [], False
        with f:
            inode, size = os.fstat(f.fileno()).st_ino, os.fstat(f.fileno()).st_size
            restarted = inode != self._read[0] or size < self._read[1]
            if restarted:
                self._read = (inode, 0)
            f.seek(self._read[1])
            raw = f.read()
        whole = raw[: raw.rfind(b"\n") + 1]  # a line being appended is read next time
        self._read = (inode, self._read[1] + len(whole))
        return [r for r in map(parse, whole.splitlines()) if r is not None], restarted


def trim(run_dir: Path, step: int) -> int:
    """Drop the records of steps after `step`: a resumed or rolled-back run replays those steps
    and logs (and evaluates) them again. Other events (rollbacks, a `ganctl eval` of a
    checkpoint file) are history and stay. Damaged lines go too; returns how many there were."""
    path = run_dir / FILE
    if not path.is_file():
        return 0
    records, damaged = read(run_dir)
    kept = [r for r in records
            if (isinstance(r.get("step"), int) and r["step"] <= step)
            or ("event" in r and (r["event"] not in REPLAYED_EVENTS or "checkpoint" in r)
                if isinstance(r.get("event"), str) else False)]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return damaged

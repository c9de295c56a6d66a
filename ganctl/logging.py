"""What a run tells its user: metrics.jsonl, a rich progress bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import io
import json
import os
import re
import select
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from ganctl.fsutil import open_append

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline


def printable(text: str) -> str:
    """Control characters (a terminal escape in a folder name or a checkpoint's metadata) shown
    as \\xNN, never sent to the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


LABELS = {"D_real": "D(x)", "D_fake": "D(G(z))"}  # how the progress line names a statistic
_NOT_STATS = frozenset({"step", "time", "img_per_s"})


def silence(fd: int) -> None:
    """Point the descriptor `fd` at os.devnull: later writes to it, by anyone (Python, rich, C
    code, the interpreter's flush at exit), go nowhere and succeed."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        if devnull != fd:
            os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        if devnull != fd:
            os.close(devnull)


class UserOutput(io.RawIOBase):
    """The file under sys.stdout or sys.stderr once `guard_user_output` has run: a write that
    fails (EPIPE: the reader of a pipe exited; EIO: a closed terminal, a dropped ssh; ENXIO,
    EBADF, a full disk behind a redirect ...) points the descriptor at os.devnull and reports
    success, so the user's output going away never fails a command or changes its exit code.
    Files that ganctl writes (checkpoints, metrics) are opened elsewhere and fail as they should."""

    def __init__(self, fd: int, name: str) -> None:
        super().__init__()
        self._fd = fd
        self.name = name
        self.gone = False  # a write failed: the output went quiet

    def fileno(self) -> int:
        return self._fd

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return not self.gone and os.isatty(self._fd)

    def write(self, b: ReadableBuffer, /) -> int:
        data = memoryview(b).cast("B")
        done = 0
        while done < len(data) and not self.gone:  # all of it, as a buffered writer would
            try:
                n = os.write(self._fd, data[done:])
            except BlockingIOError:  # a non-blocking descriptor that is full: wait for room
                self._wait()
                continue
            except OSError:
                n = 0
            if n == 0:
                self._go_quiet()
            done += n
        return len(data)

    def _wait(self) -> None:
        try:
            select.select([], [self._fd], [])
        except (OSError, ValueError):
            self._go_quiet()

    def _go_quiet(self) -> None:
        self.gone = True
        silence(self._fd)


def guard_user_output() -> None:
    """Replace sys.stdout and sys.stderr with streams over UserOutput (same encoding, errors
    and buffering), so that nothing written to the user's streams (progress, messages, the JSON
    document, the interpreter's flush at exit) can raise. A descriptor closed at start (`>&-`)
    is pointed at os.devnull first, so that no file opened later takes its number."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        if old is not None:
            try:
                if old.fileno() != fd:
                    continue
            except (OSError, ValueError):  # not the process's own stream: leave it alone
                continue
            try:
                old.flush()
            except (OSError, ValueError):
                pass
        try:
            os.fstat(fd)
        except OSError:
            silence(fd)
        raw = UserOutput(fd, f"<{name}>")
        unbuffered = old is None or isinstance(getattr(old, "buffer", None), io.RawIOBase)
        stream = io.TextIOWrapper(
            raw if unbuffered else io.BufferedWriter(raw),
            encoding=getattr(old, "encoding", None) or "utf-8",
            errors=getattr(old, "errors", None) or "backslashreplace",
            newline="\n",
            line_buffering=getattr(old, "line_buffering", name == "stderr"),
            write_through=getattr(old, "write_through", unbuffered))
        setattr(sys, name, stream)


class QuietOnClosedPipe(Console):
    """A console that falls silent when its reader goes away (`ganctl train | head`, a closed
    terminal): the run goes on and checkpoints as usual instead of exiting mid-training, which is
    rich's default. (The `ganctl` command also guards its streams: see guard_user_output.)"""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        try:
            silence(self.file.fileno())
        except (OSError, ValueError, AttributeError):
            pass


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def format_record(r: dict[str, Any], losses_only: bool = False) -> str:
    """The statistics of a metrics record, whatever the loss named them: losses to 3 decimals,
    the rest to 2; `losses_only` (a narrow terminal) keeps the losses, to 2."""
    parts = []
    for name, value in r.items():
        if name in _NOT_STATS or not isinstance(value, (int, float)):
            continue
        is_loss = name.startswith("loss")
        if losses_only and not is_loss:
            continue
        digits = 2 if losses_only or not is_loss else 3
        parts.append(f"{LABELS.get(name, name)} {value:.{digits}f}")
    return "  ".join([*parts, f"{r['img_per_s']:.0f} img/s"])


class RunLog:
    """Appends each logged record to metrics.jsonl and shows progress on `console`."""

    def __init__(self, console: Console) -> None:
        self.path: Path | None = None  # set by attach() once the run directory exists
        self.console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._total = 0
        self._start_step = 0
        self._note = ""  # shown after the statistics on the progress line (the last FID)
        self._t0 = time.perf_counter()
        self.started = False  # whether training began (start() was called)

    def attach(self, metrics: Path) -> None:
        """From now on, records go to this metrics.jsonl too."""
        self.path = metrics

    def info(self, message: str) -> None:
        self.console.print(printable(message), highlight=False, markup=False, soft_wrap=True)

    def task(self, description: str, total: int) -> Callable[[int], None]:
        """A progress display for a long job of `total` items; call the result with each advance."""
        self.info(f"{description}: {total} items")
        done = 0
        if self.console.is_terminal:
            bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                           TimeRemainingColumn(), console=self.console, transient=True)
            task_id = bar.add_task(description.split(" into ")[0], total=total)
            bar.start()

            def advance(n: int) -> None:
                nonlocal done
                done += n
                bar.update(task_id, completed=done)
                if done >= total:
                    bar.stop()
            return advance

        next_report = max(total // 10, 1)

        def advance_plain(n: int) -> None:
            nonlocal done, next_report
            done += n
            if done >= next_report or done >= total:
                self.info(f"  {done}/{total} ({100 * done // max(total, 1)}%)")
                next_report = done + max(total // 10, 1)
        return advance_plain

    def start(self, step: int, total: int) -> None:
        self._total, self._start_step, self._t0 = total, step, time.perf_counter()
        self.started = True
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn("step {task.completed}/{task.total}"), BarColumn(bar_width=16),
                TimeRemainingColumn(compact=True), TextColumn("{task.fields[stats]}", markup=False),
                console=self.console, transient=False)
            self._task = self._progress.add_task("train", total=total, completed=step, stats="")
            self._progress.start()

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (compiling) out of the ETA: they will not come again."""
        self._t0 += seconds

    def advance(self, step: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=step)

    def _append(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with open_append(self.path) as f:  # a FIFO in its place fails, never blocks
                f.write((json.dumps(record) + "\n").encode())

    def record(self, record: dict[str, Any]) -> None:
        self._append(record)
        if self._progress is not None and self._task is not None:
            # keep step, bar and ETA whole on a narrow terminal
            stats = format_record(record, losses_only=self.console.width < 120)
            stats += f"  {self._note}" if self._note else ""
            self._progress.update(self._task, completed=record["step"], stats=stats)
        else:
            self.info(f"step {record['step']}/{self._total}  {format_record(record)}  "
                      f"eta {format_duration(self._eta(record['step']))}")

    def note(self, text: str) -> None:
        """A short line part kept on the progress line from now on (e.g. the last FID)."""
        self._note = text

    def event(self, record: dict[str, Any], message: str) -> None:
        """Something that happened to the run (a rollback ...): a metrics.jsonl line and a note."""
        self._append(record)
        self.info(message)

    def _eta(self, step: int) -> float:
        done = step - self._start_step
        elapsed = time.perf_counter() - self._t0
        return elapsed / done * (self._total - step) if done > 0 else 0.0

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

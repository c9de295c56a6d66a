"""The user's terminal: standard output that survives a closed pipe or terminal (UserOutput,
guard_user_output, QuietOnClosedPipe). What may be shown on it: ganctl.text."""

from __future__ import annotations

import io
import os
import select
import sys
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer



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

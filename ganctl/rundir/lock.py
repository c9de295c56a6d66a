"""The run's lock: one process trains a run at a time, and a listing can tell which run is
being trained without disturbing it.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from ganctl.errors import RunError
from ganctl.rundir.layout import LOCK


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

"""What a dataset's raw images are before decoding: the Source, and what its readers share.

A Source lists its items and reads one raw item at a time (encoded bytes, or an HWC uint8
array for the array formats); decoding and caching are cache.py's. The kinds of source are
folders.py's (folders and zips of image files) and named.py's (the named datasets' files);
every one fingerprints its raw data, reads files only if they are regular and small enough,
and names a damaged file in one line that says what to do.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ganctl import fsutil
from ganctl.data.decode import Skip
from ganctl.errors import DataError

DEFAULT_MAX_BYTES = 256 << 20  # --max-file-mb: larger image files are skipped unread
# What to do about a damaged file: a named dataset's comes again from its download (never over
# the damaged one: that is the user's to delete); a folder's or zip's only the user has.
REFETCH = "delete it and run again with --download, or put an intact copy there"
REPLACE = "replace it with an intact copy"


def damaged(path: Path, why: str, fix: str = REFETCH) -> DataError:
    """The one-line error for a file that cannot be decoded: which file, what is wrong, and
    what to do. Nothing deletes or replaces it."""
    return DataError(f"{path} is truncated or corrupted ({' '.join(why.split())[:200]}); {fix}")


@dataclass
class Source:
    name: str  # what the user typed: a dataset name or a path
    origin: str  # where it was read from, for messages and reports
    fingerprint: str  # changes when the raw data does
    keys: list[str]  # one per item: its file (or index) for the skip report
    labels: np.ndarray  # (N,) int64 class index, -1 where there is none
    classes: list[str]
    read: Callable[[int], bytes | np.ndarray]
    encoded: bool  # read() gives encoded bytes (True) or an HWC uint8 array (False)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) never read
    sizes: np.ndarray | None = None  # (N,) bytes each read() will hold, when known up front

    def __len__(self) -> int:
        return len(self.keys)


def hash_of(*parts: object) -> str:
    """16 hex digits of the parts' reprs: a fingerprint of whatever they describe."""
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
    return h.hexdigest()[:16]


def stat_fingerprint(paths: list[Path], *extra: object) -> str:
    """Names, sizes and modification times: cheap, and it notices replaced or edited files."""
    stats = []
    for p in paths:
        st = p.stat()
        stats.append((p.name, st.st_size, st.st_mtime_ns))
    return hash_of(stats, *extra)


def read_regular(path: Path, max_bytes: int) -> bytes:
    """A regular file's bytes, at most max_bytes of them: a FIFO, device or socket is never
    read, a file larger than max_bytes is skipped without reading it."""
    try:
        return fsutil.read_regular(path, max_bytes)
    except FileNotFoundError:
        raise Skip("missing") from None
    except fsutil.NotRegularFile:
        raise Skip("not a regular file") from None
    except fsutil.FileTooLarge:
        raise Skip("too large") from None
    except OSError as e:
        raise Skip("too deep" if e.errno == errno.ENAMETOOLONG else "unreadable") from None

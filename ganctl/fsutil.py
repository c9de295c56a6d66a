"""Atomic files: whatever moment a process dies, a path holds its old content or its new one.

Checkpoints, run files (config.json, the `latest` pointer, metrics rewrites), sample grids and
the decode cache all write through here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) cannot open a directory
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TEMP_GLOB = ".*.tmp-*"  # what temp_path names look like: never a complete file


def temp_path(path: Path) -> Path:
    """The hidden temp file a write to `path` goes through (same directory, so rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file to write `path` through, so that a crash at any moment leaves the old file or the
    new one: a temp file in the same directory, fsync, rename over the target, fsync of the
    directory. Nothing is renamed if the block raises."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path, *chunks: bytes | memoryview) -> None:
    """Write the chunks to `path` atomically (see atomic_file)."""
    with atomic_file(path) as f:
        for chunk in chunks:
            f.write(chunk)

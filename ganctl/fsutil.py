"""Atomic files: whatever moment a process dies, a path holds its old content or its new one.

Checkpoints, run files (config.json, the `latest` pointer, metrics rewrites), sample grids and
the decode cache all write through here.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
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


class NotRegularFile(OSError):
    """A path that is a FIFO, socket, device or directory where a file was expected."""


class FileTooLarge(OSError):
    """A regular file larger than the caller's limit (refused from its size, before reading)."""


def _regular(fd: int, path: Path, mode: str) -> BinaryIO:
    """The open descriptor `fd` as a file object if it is a regular file; else it is closed and
    NotRegularFile raised (no byte was read from or written to it)."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, mode)  # type: ignore[return-value]  # binary: "rb" or "ab"
    except BaseException:
        os.close(fd)
        raise


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading. Anything else raises NotRegularFile without blocking
    (a FIFO is opened non-blocking, then checked) and without a byte read from it."""
    return _regular(os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)),
                    path, "rb")


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """A regular file's bytes (see open_regular). With `limit`, a file of more bytes raises
    FileTooLarge: from its size before anything is read, or from a read that overran it (the
    file grew meanwhile)."""
    with open_regular(path) as f:
        if limit is None:
            return f.read()
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise FileTooLarge(errno.EFBIG, f"larger than {limit} bytes", str(path))
        data = f.read(size + 1)  # not limit + 1: that much would be reserved up front
        if len(data) > size:  # it grew since fstat: read on to the limit
            data += f.read(limit + 1 - len(data))
        if len(data) > limit:
            raise FileTooLarge(errno.EFBIG, f"larger than {limit} bytes", str(path))
        return data


def open_append(path: Path) -> BinaryIO:
    """Open a regular file (created if absent) to append to; a FIFO or device in its place
    raises NotRegularFile at once instead of blocking until a reader appears."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
                     | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as e:
        if e.errno == errno.ENXIO:  # a FIFO with no reader
            raise NotRegularFile(errno.EINVAL, "not a regular file", str(path)) from None
        raise
    return _regular(fd, path, "ab")


def temp_path(path: Path) -> Path:
    """The hidden temp file a write to `path` goes through (same directory, so rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_file(path: Path, sync_dir: bool = True, sync: bool = True) -> Iterator[BinaryIO]:
    """A file to write `path` through, so that a crash at any moment leaves the old file or the
    new one: a temp file in the same directory, fsync, rename over the target, fsync of the
    directory. A caller who writes many files and makes them durable together once (os.sync)
    passes sync=False and sync_dir=False: a killed process still leaves each file whole or
    absent, only a power cut before that sync can leave one empty. Nothing is renamed if the
    block raises."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write(path: Path, *chunks: bytes | memoryview) -> None:
    """Write the chunks to `path` atomically (see atomic_file)."""
    with atomic_file(path) as f:
        for chunk in chunks:
            f.write(chunk)


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


# what the first bytes of a file ganctl may replace look like, by kind of output
_MAGIC = {
    "image": (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a"),  # and RIFF....WEBP, ....ftyp
    "torchscript": (b"PK\x03\x04",),
    "onnx": (b"\x08",),  # a ModelProto's first field, ir_version
}


def is_replaceable(path: Path, kind: str) -> bool:
    """Whether an existing regular file looks like an output of `kind` (image: PNG, JPEG, WebP,
    GIF or MP4; torchscript; onnx) by its first bytes, so that writing a new one over it loses
    nothing the user did not make with ganctl: a run's metrics.jsonl, config.json or checkpoint,
    named as OUT by mistake, never does."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    if head.startswith(_MAGIC[kind]):
        return True
    if kind == "image":
        return (head[:4] == b"RIFF" and head[8:12] == b"WEBP") or head[4:8] == b"ftyp"
    return False


def nearest_existing(path: Path) -> Path | None:
    """`path` if it exists (a dangling link counts), else its nearest ancestor that does: where
    making `path` as a folder would start, and what must be a folder for that to work."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return None

"""Atomic files: whatever moment a process dies, a path holds its old content or its new one.

Checkpoints, run files (config.json, the `latest` pointer, metrics rewrites), sample grids and
the decode cache all write through here.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


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


def clear_temp(tmp: Path) -> None:
    """Remove what is at a temp file's name before it is made: a file left by a process of the
    same pid that died, or a link planted there, which writing would follow (the file it points
    to would be overwritten). The link itself goes, never its target."""
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def _create_new(path: str, flags: int) -> int:
    """open()'s opener for a temp file: created new (O_EXCL: never through a link or into a file
    that is there), the name cleared first once if something is in the way."""
    flags |= os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, 0o666)
    except FileExistsError:
        clear_temp(Path(path))
        return os.open(path, flags, 0o666)


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
        with open(tmp, "wb", opener=_create_new) as f:
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


# what the first bytes of an image ganctl may replace look like
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")  # and RIFF....WEBP, ....ftyp


def is_replaceable(path: Path) -> bool:
    """Whether an existing regular file looks like an image (PNG, JPEG, WebP, GIF or MP4) by its
    first bytes, so that a grid written over it loses nothing the user did not make with ganctl
    (sample is re-run): a run's metrics.jsonl, config.json or checkpoint, named as OUT by
    mistake, never is. Model files take a proof, not a look: is_ganctl_file."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return (head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
            or head[4:8] == b"ftyp")


# --- ganctl's mark in the model files it writes ------------------------------------------------
# A TorchScript file is a zip like any torch.save file, and an ONNX file's first byte is what
# many protobufs start with: only a mark ganctl puts inside says a file is ganctl's to replace.
MARK = "ganctl"  # an ONNX model's metadata_props key; in a TorchScript zip, the extra file MARK_FILE
MARK_FILE = f"{MARK}.json"  # torch.jit.save's _extra_files name: <archive>/extra/ganctl.json
MARK_BYTES = 64 << 10  # a mark is a small JSON object: a larger entry is not one, and is not read
MARK_READ_BUDGET = 16 << 20  # bytes read to find a mark, whatever a file claims about itself
ONNX_FIELDS = 4096  # ModelProto fields walked for metadata_props (a real model has a few dozen)
ONNX_METADATA_PROPS = 14  # ModelProto.metadata_props: repeated StringStringEntryProto {key 1, value 2}
ONNX_MODEL_FIELDS = {1, 7}  # ModelProto.ir_version and .graph: what makes a protobuf a model
VARINT_BYTES = 10  # the longest protobuf varint (a 64-bit value)


def mark_json(kind: str, **fields: Any) -> str:
    """The mark of a model file ganctl writes: which ganctl, which kind of model (generator,
    checkpoint...), and anything else the writer adds."""
    from ganctl import __version__

    return json.dumps({MARK: __version__, "kind": kind, **fields})


def read_mark(path: Path, fmt: str) -> dict[str, Any] | None:
    """The ganctl mark inside a model file of format `fmt` (torchscript or onnx), or None: no
    mark, not a regular file, unreadable, or not that format at all. Bounded on a hostile file:
    at most MARK_READ_BUDGET bytes are read, whatever its zip directory or protobuf claims."""
    reader = {"torchscript": _zip_mark, "onnx": _onnx_mark}[fmt]
    try:
        with open_regular(path) as f:
            text = reader(_Budgeted(f, MARK_READ_BUDGET))
        mark = json.loads(text) if text is not None else None
    except Exception:  # any problem parsing a stranger's file (zipfile raises a dozen kinds): no mark
        return None
    return mark if isinstance(mark, dict) and isinstance(mark.get(MARK), str) else None


def is_ganctl_file(path: Path, fmt: str, kind: str) -> bool:
    """Whether `path` is ganctl's own model file of format `fmt` and kind `kind` (its mark says
    so): the one file of that format ganctl may write over. Files of an older ganctl that wrote
    no mark are not."""
    mark = read_mark(path, fmt)
    return mark is not None and mark.get("kind") == kind


class _Budgeted:
    """A binary file's read, seek and tell, refusing (OSError) to read more than `budget` bytes
    in all: what parses a stranger's file through it costs at most that much."""

    def __init__(self, f: BinaryIO, budget: int) -> None:
        self._f, self._left = f, budget

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:  # to the end: ask for what is there (a read reserves what it asks)
            n = max(0, os.fstat(self._f.fileno()).st_size - self._f.tell())
        data = self._f.read(min(n, self._left + 1))
        self._left -= len(data)
        if self._left < 0:
            raise OSError(errno.EFBIG, "read past the budget for finding a mark")
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def seekable(self) -> bool:
        return True


# what every TorchScript archive holds beside its extra files, under its one top-level folder
# (a torch.save zip has data.pkl but neither constants.pkl nor code/)
TORCHSCRIPT_MEMBERS = ("data.pkl", "constants.pkl", "version")


def _zip_mark(f: Any) -> str | None:
    """The text of <archive>/extra/MARK_FILE in a TorchScript zip (torch.jit.save's extra file):
    a zip from its first byte (no other file's bytes before it), every member under one folder,
    with a TorchScript archive's own members and code; else None."""
    if f.read(4) != b"PK\x03\x04":
        return None
    f.seek(0)
    with zipfile.ZipFile(f) as archive:
        infos = archive.infolist()
        tops = {info.filename.split("/", 1)[0] for info in infos}
        if len(tops) != 1:
            return None
        top = tops.pop()
        names = {info.filename for info in infos}
        if not all(f"{top}/{member}" in names for member in TORCHSCRIPT_MEMBERS) or not any(
                name.startswith(f"{top}/code/") for name in names):
            return None
        for info in infos:
            if info.filename == f"{top}/extra/{MARK_FILE}" and info.file_size <= MARK_BYTES:
                with archive.open(info) as member:  # its size may lie: read at most one too many
                    text = member.read(MARK_BYTES + 1)
                return text.decode() if len(text) <= MARK_BYTES else None
    return None


def _onnx_mark(f: Any) -> str | None:
    """The value of the metadata_props entry keyed MARK in an ONNX ModelProto, found by walking
    its top-level fields and seeking past the others: the graph, gigabytes maybe, is never read.
    A field that runs past the end, a group or an unknown wire type raises (not an ONNX file)."""
    end = f.seek(0, os.SEEK_END)
    f.seek(0)
    mark: str | None = None
    seen: set[int] = set()
    for _ in range(ONNX_FIELDS):
        if f.tell() == end:  # a model: its ir_version and graph are there too
            return mark if ONNX_MODEL_FIELDS <= seen else None
        number, wire = divmod(_varint(f), 8)
        seen.add(number)
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            _varint(f)
            continue
        if wire not in (1, 2, 5):  # 3 and 4: groups, never in ONNX; 6 and 7 do not exist
            raise ValueError(f"wire type {wire}")
        size = _varint(f) if wire == 2 else {1: 8, 5: 4}[wire]  # fixed64, fixed32
        start = f.tell()
        if start + size > end:
            raise ValueError("a field runs past the end of the file")
        if wire == 2 and number == ONNX_METADATA_PROPS and size <= MARK_BYTES and mark is None:
            entry = _entry(f.read(size))
            if entry.get(1) == MARK:
                mark = entry.get(2, "")
        f.seek(start + size)
    return None


def _entry(data: bytes) -> dict[int, str]:
    """A StringStringEntryProto's strings by field number (1: key, 2: value)."""
    f, strings = io.BytesIO(data), {}
    while f.tell() < len(data):
        number, wire = divmod(_varint(f), 8)
        if wire != 2:
            raise ValueError(f"wire type {wire} in a metadata entry")
        size = _varint(f)
        text = f.read(size)
        if len(text) != size:
            raise ValueError("a metadata entry runs past its end")
        strings[number] = text.decode()
    return strings


def _varint(f: Any) -> int:
    """A protobuf varint: 7 bits a byte, low first, the high bit set on all but the last."""
    value = 0
    for shift in range(0, 7 * VARINT_BYTES, 7):
        byte = f.read(1)
        if not byte:
            raise EOFError("the file ends inside a varint")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    raise ValueError("a varint longer than 10 bytes")


def nearest_existing(path: Path) -> Path | None:
    """`path` if it exists (a dangling link counts), else its nearest ancestor that does: where
    making `path` as a folder would start, and what must be a folder for that to work."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return None

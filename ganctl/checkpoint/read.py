"""Reading a checkpoint: the file held open (CheckpointFile), its data streamed through the
checksum (verify), then only the tensors a command needs read from that same descriptor
(load_tensors); read_header and read_metadata read the header alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import weakref
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO, NamedTuple

import torch

from ganctl.checkpoint.header import (
    DTYPES,
    Header,
    check_metadata,
    header_length,
    json_header,
    parse_header,
)
from ganctl.errors import CheckpointError
from ganctl.fsutil import NotRegularFile, open_regular

BLOCK_BYTES = 4 << 20  # the checksum reads the file in blocks of this size: its memory, whatever the file's


class CheckpointFile:
    """A checkpoint held open: its checksum is computed from this descriptor and its tensors are
    read from it at the header's offsets, so what is loaded is what was verified even when the
    path is pruned or replaced meanwhile (an open file keeps its bytes), and only the tensors a
    command needs are read. Closed by close() (or the Header's `with`), else as soon as nothing
    refers to it (weakref.finalize: no descriptor outlives its Header)."""

    def __init__(self, path: Path, f: BinaryIO) -> None:
        self._finalizer = weakref.finalize(self, f.close)
        self.path = path
        self._fd = f.fileno()
        self._stamp = _stamp(os.fstat(self._fd))  # what the file was when it was opened

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        self._finalizer()

    def fd(self) -> int:
        """The descriptor, checked open and its file unchanged (written to in place since it was
        opened, it no longer holds what was verified)."""
        if self.closed:  # its number may belong to another file by now
            raise ValueError(f"checkpoint {self.path} was closed before it was read")
        if not _stamp(os.fstat(self._fd)).same_file_as(self._stamp):
            raise CheckpointError(f"{self.path} was written to while it was read; try again")
        return self._fd


class _Stamp(NamedTuple):
    """What a file's status says of its bytes, to tell a write in place since it was opened."""

    size: int
    mtime_ns: int
    ctime_ns: int  # set by every write, and by os.utime: unlike mtime, it cannot be put back
    inode: int  # with the device: the descriptor still names the file that was opened
    device: int
    links: int

    def same_file_as(self, before: _Stamp) -> bool:
        """The same file, not written to since `before`: size, mtime, inode and device as they
        were, and ctime too unless the link count changed (pruning or replacing the file unlinks
        it, which sets its ctime and leaves its bytes to the open descriptor)."""
        return (self[:2] == before[:2] and self[3:5] == before[3:5]
                and (self.ctime_ns == before.ctime_ns or self.links != before.links))


def _stamp(st: os.stat_result) -> _Stamp:
    return _Stamp(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, st.st_nlink)


def _open_error(path: Path, e: OSError) -> CheckpointError:
    if isinstance(e, NotRegularFile):
        return CheckpointError(f"{path} is not a regular file (a FIFO, socket, device or "
                               "directory); ganctl does not read it")
    if isinstance(e, FileNotFoundError):
        return CheckpointError(f"checkpoint {path} does not exist")
    if isinstance(e, IsADirectoryError):
        return CheckpointError(f"{path} is a directory, not a checkpoint file")
    if isinstance(e, PermissionError):
        return CheckpointError(f"cannot read {path}: permission denied")
    return CheckpointError(f"cannot read {path}: {e.strerror or e}")


def read_header(path: Path) -> Header:
    """Parse only the safetensors header (8-byte length + JSON) and check it is ganctl's."""
    path = Path(path)
    try:
        with open_regular(path) as f:
            return _read_header(path, f)
    except OSError as e:
        raise _open_error(path, e) from None


def read_metadata(path: Path) -> Header:
    """A checkpoint's header with its metadata checked as read_header checks it, but its tensor
    entries neither checked nor kept (tensors is empty): a quarter of the time on a ResNet's 500
    entries, which a listing of hundreds of runs needs. Never to load from."""
    path = Path(path)
    try:
        with open_regular(path) as f:  # a FIFO named like a checkpoint is not waited on
            size = os.fstat(f.fileno()).st_size
            raw = f.read(header_length(path, f.read(8), size))
    except OSError as e:
        raise _open_error(path, e) from None
    header = json_header(path, raw)
    metadata = header.pop("__metadata__", None) or {}
    check_metadata(path, metadata)
    return Header(path, metadata, {}, size, 8 + len(raw))


def open_checkpoint(path: Path) -> Header:
    """A checkpoint verified against its checksum, streamed in blocks: its header, holding the
    file open (Header.blob) for load_tensors to read the tensors a command needs from. Close it
    (`with open_checkpoint(p) as header:`), or drop it."""
    path = Path(path)
    try:
        f = open_regular(path)
    except OSError as e:
        raise _open_error(path, e) from None
    opened = CheckpointFile(path, f)
    try:
        header = replace(_read_header(path, f), blob=opened)  # checked against the file's size
        verify(header)
    except OSError as e:
        opened.close()
        raise _open_error(path, e) from None
    except BaseException:
        opened.close()
        raise
    return header


def _read_header(path: Path, f: BinaryIO) -> Header:
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    raw = f.read(header_length(path, head, size))
    return parse_header(path, raw, size)


def verify(header: Header) -> None:
    """Check the data section matches the checksum in the metadata, streamed in blocks from the
    header's open file if it has one (open_checkpoint), else from the file at its path."""
    path = header.path
    checksum = header.metadata.get("ganctl.checksum")
    if checksum is None:
        raise CheckpointError(f"{path} has no checksum (ganctl.checksum), so it cannot be "
                              "verified; `ganctl inspect --no-verify` shows its header")
    try:
        if header.blob is not None:
            digest, end = _data_digest(header.blob.fd(), header.data_start)
            header.blob.fd()  # unchanged while it was read
            if end != header.file_size:
                raise CheckpointError(f"{path} changed while it was read; try again")
        else:
            with open_regular(path) as f:
                digest, _ = _data_digest(f.fileno(), header.data_start)
    except OSError as e:
        raise _open_error(path, e) from None
    rest = {k: v for k, v in header.metadata.items() if k != "ganctl.checksum"}
    digest.update(json.dumps(rest, sort_keys=True).encode())
    if "sha256:" + digest.hexdigest() != checksum:
        raise CheckpointError(f"{path} is corrupted: its data does not match its checksum; use an "
                              "earlier checkpoint")


def _data_digest(fd: int, start: int) -> tuple[hashlib._Hash, int]:
    """sha256 of the file from `start` to its end, read in blocks into one buffer; and where the
    end was."""
    digest = hashlib.sha256()
    block = memoryview(bytearray(BLOCK_BYTES))
    offset = start
    while n := _read_at(fd, block, offset):
        digest.update(block[:n])
        offset += n
    return digest, offset


def _read_at(fd: int, view: memoryview, offset: int) -> int:
    """Fill `view` with the file's bytes from `offset`, straight into it (no copy); the count
    read, short only at the end of the file. The descriptor's position is not used."""
    done = 0
    while done < len(view):
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [view[done:]], offset + done)
        else:  # (no preadv: a block's copy at a time)
            chunk = os.pread(fd, min(len(view) - done, BLOCK_BYTES), offset + done)
            n = len(chunk)
            view[done:done + n] = chunk
        if n == 0:
            break
        done += n
    return done


def load_tensors(source: Header | Path, prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Tensors (only those starting with one of `prefixes`, if given), on CPU: from a verified
    header's open file (open_checkpoint), else read from the file at the path (unverified). Only
    the asked tensors are read, each once into its own buffer."""
    path = source.path if isinstance(source, Header) else Path(source)
    try:
        if isinstance(source, Header) and source.blob is not None:
            tensors = _read_tensors(source, source.blob.fd(), prefixes)
            source.blob.fd()  # unchanged while they were read
            return tensors
        with open_regular(path) as f:
            return _read_tensors(_read_header(path, f), f.fileno(), prefixes)
    except OSError as e:
        raise _open_error(path, e) from None


def _read_tensors(header: Header, fd: int, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    chosen = [k for k in header.tensors if not prefixes or k.startswith(prefixes)]
    out = {}
    for name in sorted(chosen, key=lambda k: header.tensors[k]["data_offsets"]):
        info = header.tensors[name]
        start, stop = info["data_offsets"]
        buffer = bytearray(stop - start)
        if _read_at(fd, memoryview(buffer), header.data_start + start) != len(buffer):
            raise CheckpointError(f"{header.path} is truncated or changed while it was read; use an "
                                  "earlier checkpoint, or try again")
        out[name] = _tensor(buffer, info["dtype"], info["shape"])
    return out


def _tensor(buffer: bytearray, dtype: str, shape: list[int]) -> torch.Tensor:
    """The tensor whose little-endian bytes are `buffer`, sharing its memory (no copy)."""
    torch_dtype = DTYPES[dtype]
    if not buffer:  # frombuffer refuses an empty buffer
        return torch.empty(shape, dtype=torch_dtype)
    if torch_dtype == torch.bool:  # a byte other than 0 or 1 is no bool torch can hold
        return torch.frombuffer(buffer, dtype=torch.uint8).ne(0).reshape(shape)
    tensor = torch.frombuffer(buffer, dtype=torch_dtype)
    if sys.byteorder == "big" and torch_dtype.itemsize > 1:
        tensor = tensor.view(torch.uint8).view(-1, torch_dtype.itemsize).flip(1).contiguous() \
            .view(torch_dtype)
    return tensor.reshape(shape)

"""A pickle read opcode by opcode, building nothing (pickletools.genops): which globals it names,
whether it is whole, and the layout of the torch storages nested in NVlabs' files.

scan() is the reader's first pass over a network file (unpickle.py): every global must be
allowed and every opcode one NVlabs' files use, else a CheckpointError names it before anything
is built. The bytes of each torch storage (torch.storage._load_from_bytes, torch's legacy format:
five small pickles, then the element count and the raw data) are checked the same way with
storage_layout(), wherever they are found.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pickletools import genops
from typing import Any, BinaryIO

import torch

MAX_LINE = 1 << 16  # a text opcode's argument (GLOBAL 'torch FloatStorage'): no file needs more
# The opcodes that make nothing run: values, containers, memo, framing, and calls of what an
# allowed global names (REDUCE, BUILD, NEWOBJ; unpickle.py restricts what each may touch).
# Missing on purpose: INST and OBJ (a call by name), PERSID and BINPERSID (an external object),
# EXT1/2/4 (a global by a registry number), NEXT_BUFFER and READONLY_BUFFER (out-of-band data).
DATA_OPCODES = frozenset("""
    PROTO FRAME STOP MARK POP POP_MARK DUP NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 LONG
    LONG1 LONG4 FLOAT BINFLOAT STRING BINSTRING SHORT_BINSTRING BINBYTES SHORT_BINBYTES
    BINBYTES8 BYTEARRAY8 UNICODE SHORT_BINUNICODE BINUNICODE BINUNICODE8 EMPTY_LIST APPEND
    APPENDS LIST EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_DICT DICT SETITEM SETITEMS
    EMPTY_SET ADDITEMS FROZENSET GET BINGET LONG_BINGET PUT BINPUT LONG_BINPUT MEMOIZE GLOBAL
    STACK_GLOBAL REDUCE BUILD NEWOBJ""".split())
STRINGS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
                     "SHORT_BINSTRING", "BINSTRING", "STRING"})
BYTES = frozenset({"SHORT_BINBYTES", "BINBYTES", "BINBYTES8"})

# torch's legacy storage format (torch.save(storage, _use_new_zipfile_serialization=False))
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
LEGACY_HEAD = b"\x80\x02\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")  # its first pickle
STORAGE_TYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool}
# a storage's pickles use only these: no call of any kind (torch's persistent id is the storage)
STORAGE_OPCODES = (DATA_OPCODES - {"REDUCE", "BUILD", "NEWOBJ", "STACK_GLOBAL"}) \
    | {"BINPERSID"}


class Refused(Exception):
    """Something the reader will not read; its message says what, for `FILE holds ...`."""


class Bounded:
    """A binary file read no further than its size: a length a file declares past its end (a
    frame, a string of 2**60 bytes) reads nothing, and the reader finds the pickle cut short
    without reserving or reading what the length says; readline stops after
    MAX_LINE bytes. With `digest`, every byte read goes through it (the scan hashes the file as
    it reads it, front to back)."""

    def __init__(self, f: BinaryIO, size: int, digest: Any = None) -> None:
        self.f, self.size, self.digest = f, size, digest
        self.position = f.tell()

    def tell(self) -> int:
        return self.position

    def read(self, n: int = -1) -> bytes:
        left = max(self.size - self.position, 0)
        if n is not None and n > left:  # a length past the end: cut short, and nothing read
            return b""
        return self._seen(self.f.read(left if n is None or n < 0 else n))

    def readline(self, limit: int = -1) -> bytes:
        return self._seen(self.f.readline(min(MAX_LINE, max(self.size - self.position, 0))))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def _seen(self, data: bytes) -> bytes:
        self.position += len(data)
        if self.digest is not None:
            self.digest.update(data)
        return data


@dataclass
class Scanned:
    """What a scan found: the globals named, in order, and the file's sha256 (with hashing)."""

    globals: list[tuple[str, str]]
    sha256: str = ""


Check = Callable[[str, str], None]  # refuses a global it does not allow (raises Refused)


def scan(f: BinaryIO, size: int, check: Check, hashing: bool = True) -> Scanned:
    """Read the pickle in `f` (of `size` bytes) opcode by opcode to its end, building nothing:
    each global goes to `check`; an opcode no NVlabs file uses, a storage whose nested pickles
    are not torch's, bytes after the pickle's end, or a pickle cut short is Refused."""
    source = Bounded(f, size, hashlib.sha256() if hashing else None)
    found: list[tuple[str, str]] = []
    _walk(_ops(source), found, check, DATA_OPCODES, nested=True)
    if source.tell() != size:
        raise Refused(f"{size - source.tell()} bytes after the pickle's end, which no NVlabs "
                      "file has")
    return Scanned(found, source.digest.hexdigest() if source.digest is not None else "")


def _ops(source: Any) -> Iterator[tuple[str, Any]]:
    """(opcode name, argument) of one pickle; a cut or malformed one is Refused."""
    try:
        for op, arg, _pos in genops(source):
            yield op.name, arg
    except (ValueError, EOFError, struct.error, UnicodeDecodeError, OverflowError) as e:
        raise Refused(f"a pickle that is cut short or malformed ({str(e)[:120]}): the file is "
                      "truncated or damaged") from None


def _walk(ops: Iterator[tuple[str, Any]], found: list[tuple[str, str]], check: Check,
          allowed_ops: frozenset[str], nested: bool) -> None:
    """Follow the strings a global can be named by (pushed, memoised, fetched back) well enough
    to name every global without building anything; a STACK_GLOBAL whose names it cannot follow
    is refused. `nested`: bytes in torch's storage format are checked as storages too."""
    memo: dict[int, Any] = {}
    top: list[Any] = []  # the values pushed, as far as naming a global needs them
    for op, arg in ops:
        if len(top) > 2:  # only the last two are ever read: the scan's memory stays flat
            del top[:-2]
        if op not in allowed_ops:
            raise Refused(f"pickle opcode {op}, which no NVlabs network file needs")
        if op in STRINGS:
            top.append(arg)
        elif op in ("BINGET", "LONG_BINGET", "GET"):
            top.append(memo.get(int(arg)))
        elif op == "MEMOIZE":  # (only strings matter: a global's names)
            memo[len(memo)] = top[-1] if top and isinstance(top[-1], str) else None
        elif op in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = top[-1] if top and isinstance(top[-1], str) else None
        elif op == "GLOBAL":
            module, _, name = str(arg).partition(" ")
            check(module, name)
            found.append((module, name))
        elif op == "STACK_GLOBAL":
            if len(top) < 2 or not all(isinstance(s, str) for s in top[-2:]):
                raise Refused("a global named by values made while unpickling (STACK_GLOBAL "
                              "after other opcodes than two strings), which the reader cannot "
                              "name without running the file")
            check(top[-2], top[-1])
            found.append((top[-2], top[-1]))
            top.append(None)
        else:
            if nested and op in BYTES and bytes(arg[:len(LEGACY_HEAD)]) == LEGACY_HEAD:
                storage_layout(arg)  # a storage's nested pickles, before anything is built
            top.append(None)  # anything else on the stack breaks a pair of names


@dataclass(frozen=True)
class Layout:
    """A storage in torch's legacy format: its dtype and number of elements; its data is the
    last numel * itemsize bytes."""

    dtype: torch.dtype
    numel: int


def storage_layout(data: bytes) -> Layout:
    """The storage `data` holds, checked without building anything: torch's five pickles (magic
    number, protocol, system info, the storage's persistent id naming one of STORAGE_TYPES, its
    key), then its element count and exactly that many elements' bytes. Anything else (another
    global, a call, a length that does not add up) is Refused."""
    if bytes(data[:len(LEGACY_HEAD)]) != LEGACY_HEAD:
        raise Refused("a storage that is not in torch's storage format")
    source = io.BytesIO(bytes(data))
    types: list[str] = []

    def storage_type(module: str, name: str) -> None:
        if module != "torch" or name not in STORAGE_TYPES:
            raise Refused(f"a storage whose nested pickle names {_name(module, name)}, which no "
                          "torch storage needs")
        types.append(name)

    for _ in range(5):
        _walk(_ops(source), [], storage_type, frozenset(STORAGE_OPCODES), nested=False)
    if len(types) != 1:
        raise Refused(f"a storage whose pickles name {len(types)} storage types, not one")
    head = source.read(8)
    dtype = STORAGE_TYPES[types[0]]
    numel = struct.unpack("<q", head)[0] if len(head) == 8 else -1
    left = len(data) - source.tell()
    if numel < 0 or numel * dtype.itemsize != left:
        raise Refused(f"a storage of {max(numel, 0)} elements over {left} bytes: the file is "
                      "damaged")
    return Layout(dtype, numel)


def _name(module: str, name: str) -> str:
    """module.name as a file spells it, cut short for a one-line message."""
    text = f"{module}.{name}"
    return text if len(text) <= 120 and text.isprintable() else repr(text[:120])

"""MATLAB 5 .mat files (SVHN's), read by walking their elements in Python.

scipy's reader is C code that trusts the file: one flipped bit (the complex flag of an array
with no imaginary part) crashes the process. This reader checks every length against the
bytes there are, refuses what SVHN never holds (complex, sparse, big-endian), and raises
ValueError with what is wrong; numeric arrays come back by name, anything else is passed over.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator

import numpy as np

HEADER = 128  # text, subsystem offset, version, endian indicator
LITTLE_ENDIAN = b"IM"  # the indicator's two bytes as a little-endian file writes them
VERSION_5 = b"\x00\x01"  # 0x0100, little-endian; MATLAB 7.3 writes 0x0200 (an HDF5 file)
MI_MATRIX, MI_COMPRESSED, MI_INT32, MI_UINT32, MI_INT8 = 14, 15, 5, 6, 1
# storage types of a numeric array's data (a double array may be stored as uint8, and is)
DTYPES = {1: "<i1", 2: "<u1", 3: "<i2", 4: "<u2", 5: "<i4", 6: "<u4", 7: "<f4", 9: "<f8",
          12: "<i8", 13: "<u8"}
NUMERIC_CLASSES = frozenset(range(6, 16))  # mxDOUBLE .. mxUINT64
COMPLEX = 0x800  # array flags: has an imaginary part
MAX_DIMS = 32


def read_mat(raw: bytes | memoryview, max_bytes: int) -> dict[str, np.ndarray]:
    """Every real numeric array in the file by name (column-major, as MATLAB stores it);
    compressed elements are inflated to at most max_bytes each (a bomb stops there)."""
    view = memoryview(raw)
    if len(view) < HEADER or bytes(view[126:128]) != LITTLE_ENDIAN:
        raise ValueError("not a little-endian MATLAB 5 .mat file")
    if bytes(view[124:126]) != VERSION_5:
        raise ValueError("not a MATLAB 5 .mat file (7.3 files are HDF5: save with -v7)")
    arrays: dict[str, np.ndarray] = {}
    for kind, body in _elements(view, HEADER, padded=False):
        if kind == MI_COMPRESSED:
            inner = memoryview(_inflate(body, max_bytes))
            elements = [(k, b) for k, b in _elements(inner, 0, padded=False)]
        else:
            elements = [(kind, body)]
        for inner_kind, inner_body in elements:
            if inner_kind == MI_MATRIX and (found := _matrix(inner_body)) is not None:
                arrays[found[0]] = found[1]
    return arrays


def _elements(view: memoryview, pos: int, padded: bool) -> Iterator[tuple[int, memoryview]]:
    """(type, body) of each element from pos to the end. Inside a matrix each body is padded
    to 8 bytes; at the top level the declared size already covers it."""
    while pos < len(view):
        if pos + 8 > len(view):
            raise ValueError(f"an element's tag at byte {pos} is cut off")
        kind, size = struct.unpack_from("<II", view, pos)
        if kind >> 16:  # small element: size and type in one word, data in the next
            kind, size, start, end = kind & 0xFFFF, kind >> 16, pos + 4, pos + 8
            if size > 4:
                raise ValueError(f"a small element at byte {pos} claims {size} bytes")
        else:
            start = pos + 8
            end = start + size + ((-size) % 8 if padded else 0)
        if start + size > len(view):
            raise ValueError(f"an element at byte {pos} runs {start + size - len(view)} bytes "
                             "past the end of the data")
        yield kind, view[start:start + size]
        pos = end


def _inflate(body: memoryview, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as e:
        raise ValueError(f"zlib: {e}") from None
    if len(out) > max_bytes:
        raise ValueError(f"a compressed element holds more than {max_bytes} bytes")
    if not inflater.eof:
        raise ValueError("a compressed element ends early")
    return out


def _matrix(body: memoryview) -> tuple[str, np.ndarray] | None:
    """(name, array) of a real numeric matrix element; None for any other class."""
    parts = _elements(body, 0, padded=True)
    kind, flags = next(parts, (None, memoryview(b"")))
    if kind != MI_UINT32 or len(flags) != 8:
        raise ValueError("a matrix without its array flags")
    word = struct.unpack_from("<I", flags)[0]
    if word & 0xFF not in NUMERIC_CLASSES:
        return None  # a cell, struct, char or sparse array: nothing SVHN's data is
    if word & COMPLEX:
        raise ValueError("a complex array (SVHN's are real)")
    kind, dims_body = next(parts, (None, memoryview(b"")))
    if kind != MI_INT32 or not 2 <= len(dims_body) // 4 <= MAX_DIMS or len(dims_body) % 4:
        raise ValueError("a matrix without its dimensions")
    dims = np.frombuffer(dims_body, dtype="<i4")
    if (dims < 0).any():
        raise ValueError(f"a matrix of negative dimensions {tuple(dims.tolist())}")
    kind, name = next(parts, (None, memoryview(b"")))
    if kind != MI_INT8:
        raise ValueError("a matrix without its name")
    kind, data = next(parts, (None, memoryview(b"")))
    if kind not in DTYPES:
        raise ValueError(f"a matrix whose data is of unknown type {kind}")
    dtype = np.dtype(DTYPES[kind])
    count = math.prod(int(d) for d in dims)  # Python ints: no overflow
    if len(data) != count * dtype.itemsize:
        raise ValueError(f"a {'x'.join(map(str, dims.tolist()))} matrix holding {len(data)} "
                         f"bytes of {dtype.name}")
    text = bytes(name).decode("ascii", errors="replace")
    return text, np.frombuffer(data, dtype=dtype).reshape(tuple(dims.tolist()), order="F")

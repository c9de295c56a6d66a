"""A checkpoint's header, parsed and checked before any tensor is read: the 8-byte length, the
JSON of the tensor entries (each entry's dtype, shape and byte span, checked against the file's
size) and ganctl's metadata (schema, step, config); the Header that holds them; safetensors'
dtype names.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import torch

from ganctl.errors import CheckpointError

if TYPE_CHECKING:
    from ganctl.checkpoint.read import CheckpointFile

SCHEMA = 4  # 2: ganctl.checksum; 3: classes and d_steps in the config; 4: the model zoo's keys
SUFFIX = ".safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; larger is hostile or corrupt


# safetensors' dtype names and the torch dtypes they are (little-endian in the file)
DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2, "U16": torch.uint16, "I16": torch.int16, "F16": torch.float16,
    "BF16": torch.bfloat16, "U32": torch.uint32, "I32": torch.int32, "F32": torch.float32,
    "U64": torch.uint64, "I64": torch.int64, "F64": torch.float64,
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype by safetensors' name for it (F32), as a checkpoint's header writes it."""
    return _NAMES.get(dtype, str(dtype).removeprefix("torch."))


@dataclass(frozen=True)
class Header:
    path: Path
    metadata: dict[str, str]
    tensors: dict[str, dict[str, Any]]  # name -> {"dtype": .., "shape": [..], "data_offsets": ..}
    file_size: int
    data_start: int  # 8 + header length: where the tensor bytes begin
    # the file, open, as verified (open_checkpoint): the tensors are read from exactly the bytes
    # that passed the checksum; None when only the header was read. (Named when it held the
    # file's bytes; `dataclasses.replace(header, blob=None)` lets it go once tensors are loaded.)
    blob: CheckpointFile | None = field(default=None, repr=False, compare=False)

    def close(self) -> None:
        """Close the verified file (its tensors cannot be read from this header after)."""
        if self.blob is not None:
            self.blob.close()

    def __enter__(self) -> Header:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def step(self) -> int:
        return int(self.metadata["ganctl.step"])

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.metadata["ganctl.config"])

    def _json_object(self, key: str) -> dict[str, Any] | None:
        """A JSON object in the metadata, or None (absent or not an object: informative only)."""
        try:
            value = json.loads(self.metadata.get(key) or "null")
        except (ValueError, RecursionError):
            return None
        return value if isinstance(value, dict) else None

    @property
    def metrics(self) -> dict[str, Any] | None:
        """The last logged record."""
        return self._json_object("ganctl.metrics")

    @property
    def eval(self) -> dict[str, Any] | None:
        """The evaluation made at this checkpoint's step (train --eval-every), if any."""
        return self._json_object("ganctl.eval")

    @property
    def fid(self) -> float | None:
        value = (self.eval or {}).get("fid")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# files often given where a checkpoint goes, by their first bytes: named instead of a header
# length that makes no sense
_NOT_CHECKPOINTS = ((b"PK\x03\x04", "a zip archive (a TorchScript file, such as ganctl export "
                     "writes, or a torch.save file)"), (b"\x80", "a Python pickle (torch.save's "
                     "old format)"), (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
                    (b"\x08", "perhaps an ONNX model"), (b"{", "JSON text (a run's config.json?)"))


def header_length(path: Path, head: bytes, size: int) -> int:
    if len(head) < 8:
        raise CheckpointError(f"{path} is truncated or not a safetensors file")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER_BYTES or 8 + n > size:
        kind = next((what for magic, what in _NOT_CHECKPOINTS if head.startswith(magic)), None)
        if kind is not None:
            raise CheckpointError(f"{path} is not a ganctl checkpoint: it is {kind}; give a "
                                  ".safetensors checkpoint or a run directory")
        raise CheckpointError(f"{path} has a header of {n} bytes in a {size}-byte file: "
                              "truncated, corrupted or not a safetensors file")
    return n


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: Python's json keeps the last of a repeated
    key where safetensors refuses the file, so two readers would see two different files."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def json_header(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise CheckpointError(f"{path} has a corrupted header (key {shown(e.args[0])} is in it twice); "
                              "it is not a usable checkpoint") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"{path} has a corrupted header (not JSON); "
                              "it is not a usable checkpoint") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupted header; it is not a usable checkpoint")
    return header


def parse_header(path: Path, raw: bytes, size: int) -> Header:
    header = json_header(path, raw)
    metadata = header.pop("__metadata__", None) or {}
    check_metadata(path, metadata)
    _check_tensor_entries(path, header)
    _check_spans(path, header, size - 8 - len(raw))
    return Header(path, metadata, header, size, 8 + len(raw))


_DTYPE_BYTES = {name: dtype.itemsize for name, dtype in DTYPES.items()}
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
MAX_DIMS = 8  # a tensor's dimensions: ganctl's have at most 4 (a convolution's weight)
# bytes a tensor may span, its empty dimensions counted as 1: torch sizes an empty tensor's
# strides that way, and a file's size bounds only a non-empty tensor's bytes (_check_spans), so
# an empty [2**62, 2**62, 0] passed every check and overflowed torch's size arithmetic
MAX_TENSOR_BYTES = 2**50


def shown(name: str) -> str:
    """A name from a file, fit for a one-line message: as it is if it is printable, else quoted
    with escapes (a newline, a terminal escape or a lone surrogate stays out of the terminal)."""
    return name[:80] if name.isprintable() else repr(name[:80])


def _is_text(value: str) -> bool:
    """Text that is UTF-8 (JSON's \\ud800 escapes make lone surrogates, which are not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_tensor_entries(path: Path, tensors: dict[str, Any]) -> None:
    for name, info in tensors.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (name and name.isprintable() and _is_text(name)
                and isinstance(info, dict) and info.keys() == _ENTRY_KEYS
                and isinstance(info["dtype"], str) and info["dtype"] in _DTYPE_BYTES
                and isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{path} has a corrupted header (entry {name[:80]!r}); it is not "
                                  "a usable checkpoint")
        _check_shape(path, name, shape, _DTYPE_BYTES[info["dtype"]])


def _check_shape(path: Path, name: str, shape: list[int], itemsize: int) -> None:
    """A shape torch can hold: at most MAX_DIMS dimensions and MAX_TENSOR_BYTES bytes."""
    if len(shape) > MAX_DIMS:
        what = f"{len(shape)} dimensions, more than any of ganctl's tensors ({MAX_DIMS})"
    elif math.prod(max(d, 1) for d in shape) * itemsize > MAX_TENSOR_BYTES:
        what = f"a shape of more than 2**{MAX_TENSOR_BYTES.bit_length() - 1} bytes, past any file's size"
    else:
        return
    raise CheckpointError(f"{path} has a corrupted header (tensor {shown(name)} declares {what}); "
                          "use an earlier checkpoint")


def _check_spans(path: Path, tensors: dict[str, Any], data_size: int) -> None:
    """Every tensor's bytes are exactly its shape times its dtype's size, the spans follow each
    other with no gap or overlap from 0, and they end where the file does: so the file's size
    bounds everything a model built from it can need, whatever its config claims."""
    end = 0
    for name, info in sorted(tensors.items(), key=lambda item: item[1]["data_offsets"]):
        start, stop = info["data_offsets"]
        need = math.prod(info["shape"]) * _DTYPE_BYTES[info["dtype"]]
        if stop - start != need:
            raise CheckpointError(f"{path} is corrupted: tensor {name[:80]!r} declares "
                                  f"{info['dtype']} {tuple(info['shape'])} ({need} bytes) over "
                                  f"{stop - start} bytes")
        if start != end:
            raise CheckpointError(f"{path} is corrupted: its tensors' bytes "
                                  f"{'overlap' if start < end else 'have gaps'} at {start}")
        end = stop
    if data_size < end:
        raise CheckpointError(f"{path} is truncated ({data_size} of {end} data bytes); use an "
                              "earlier checkpoint")
    if data_size > end:
        raise CheckpointError(f"{path} is corrupted ({data_size - end} bytes past its data)")


_JSON_KINDS = {bool: "true or false", int: "a number", float: "a number", list: "a list",
               dict: "an object", type(None): "null"}
_DIGITS = re.compile(r"[0-9]{1,19}")  # a step or schema as str(int) writes it


def check_metadata(path: Path, metadata: Any) -> None:
    """The header's metadata is ganctl's: safetensors metadata is a map of text to text, and the
    values ganctl reads (schema, step, config) are what it writes. Every reader of metadata
    (Header.step, .config, .metrics, inspect, runs) relies on this having been checked."""
    if not isinstance(metadata, dict) or "ganctl.schema" not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a ganctl checkpoint")
    _check_whole_number(path, metadata, "ganctl.schema")
    schema = int(metadata["ganctl.schema"])
    if schema > SCHEMA:  # before the rest: a newer ganctl may write metadata this one cannot read
        raise CheckpointError(
            f"{path} was written by a newer ganctl (schema {schema}, this one reads "
            f"{SCHEMA}); upgrade ganctl to read it")
    for key, value in metadata.items():
        if not isinstance(value, str):
            _damaged(path, f"{shown(key)} is {_kind(value)}, not a string")
        if not (_is_text(key) and _is_text(value)):
            _damaged(path, f"{shown(key)} is not UTF-8 text")
    _check_whole_number(path, metadata, "ganctl.step")
    try:
        config = json.loads(metadata.get("ganctl.config", "null"))
    except (ValueError, RecursionError):
        config = None
    if not isinstance(config, dict):
        _damaged(path, "ganctl.config is not a JSON table")


def _check_whole_number(path: Path, metadata: dict[str, Any], key: str) -> None:
    if key not in metadata:
        _damaged(path, f"{key} is missing")
    value = metadata[key]
    if not isinstance(value, str):
        _damaged(path, f"{key} is {_kind(value)}, not a string")
    if not _DIGITS.fullmatch(value):
        _damaged(path, f"{key} is {value[:20]!r}, not a whole number")


def _kind(value: Any) -> str:
    """What a JSON value is, in words."""
    return _JSON_KINDS.get(type(value), "not text")


def _damaged(path: Path, what: str) -> NoReturn:
    raise CheckpointError(f"{path} has damaged ganctl metadata ({what}); use an earlier checkpoint")

"""The checkpoint file format: one .safetensors file per save, written atomically, read without
pickle. Where checkpoints live in a run (and which one is newest) is rundir.py's.

Layout of a file: tensors `G.*`, `D.*`, `G_ema.*` (module state dicts), `opt_G.*`, `opt_D.*`
(optimizer state), `rng.*` and `state.*` (the rest of the training state); string metadata
`ganctl.version`, `ganctl.schema`, `ganctl.config` (JSON), `ganctl.step`, `ganctl.created`,
`ganctl.metrics` (JSON of the last logged record). Nothing here calls torch.load or pickle:
opening a stranger's checkpoint runs no code. A checkpoint is verified by streaming its checksum
from an open descriptor, and only the tensors a command needs are then read from that same
descriptor: sampling a 2 GB checkpoint holds G_ema's bytes, not the file's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, NoReturn

import torch
from safetensors.torch import save as safetensors_bytes

from ganctl import __version__
from ganctl.errors import CheckpointError
from ganctl.fsutil import NotRegularFile, atomic_write, open_regular

SCHEMA = 4  # 2: ganctl.checksum; 3: classes and d_steps in the config; 4: the model zoo's keys
SUFFIX = ".safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; larger is hostile or corrupt

# --- writing ------------------------------------------------------------------------------

def save(path: Path, tensors: dict[str, torch.Tensor], config_json: str, step: int,
         extra: dict[str, str] | None = None) -> None:
    """Write a checkpoint atomically. Tensors are copied to the CPU, contiguous."""
    metadata = {
        "ganctl.version": __version__,
        "ganctl.schema": str(SCHEMA),
        "ganctl.config": config_json,
        "ganctl.step": str(step),
        **(extra or {}),
    }
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    body = safetensors_bytes(cpu, metadata=metadata)
    (n,) = struct.unpack("<Q", body[:8])
    header = json.loads(body[8:8 + n])
    data = memoryview(body)[8 + n:]
    # The checksum covers the data section and the rest of the metadata (the config, the step):
    # neither depends on the header entry the checksum goes in.
    header["__metadata__"]["ganctl.checksum"] = _checksum(data, header["__metadata__"])
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    try:
        atomic_write(path, struct.pack("<Q", len(raw)) + raw, data)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror}; "
                              "check free space and permissions") from None


# --- optimizer state as flat tensors --------------------------------------------------------

DAMAGED = "; the file is damaged: use an earlier checkpoint"  # after a tensor loaded wrong
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # each of its parameter's shape and dtype
SQUARED_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq")  # never negative
ADAM_STEP = "step"  # a float count (torch keeps Adam's step as a float32 tensor)
MAX_INDEX_DIGITS = 9  # a parameter's index in a name: more digits are no model's


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """`{prefix}.lr.{g}` per param group and `{prefix}.state.{i}.{key}` per parameter."""
    sd = opt.state_dict()
    out = {f"{prefix}.lr.{g}": torch.tensor(group["lr"], dtype=torch.float64)
           for g, group in enumerate(sd["param_groups"])}
    for index, entries in sd["state"].items():
        for key, value in entries.items():
            out[f"{prefix}.state.{index}.{key}"] = torch.as_tensor(value)
    return out


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                   prefix: str) -> None:
    """Put optimizer_tensors() back, each tensor checked first: torch's load_state_dict casts a
    moment of another dtype to its parameter's without a word (an I32 exp_avg becomes garbage
    floats) and takes one of another shape, which fails mid-step."""
    sd = opt.state_dict()
    params = [p for group in opt.param_groups for p in group["params"]]  # state_dict's numbering
    state: dict[int, dict[str, torch.Tensor]] = {}
    lead = f"{prefix}.state."
    rates = {f"{prefix}.lr.{g}" for g in range(len(sd["param_groups"]))}
    for name, value in tensors.items():
        if name.startswith(lead):
            index, key = _state_entry(name, lead, len(params))
            _check_optimizer_tensor(name, key, value, params[index])
            state.setdefault(index, {})[key] = value
        elif name.startswith(f"{prefix}.") and name not in rates:  # read by nothing: lost on the next save
            raise CheckpointError(f"checkpoint tensor {shown(name)} is not part of {prefix}'s state "
                                  f"(its learning rates and its parameters' Adam state){DAMAGED}")
    for g, group in enumerate(sd["param_groups"]):
        name = f"{prefix}.lr.{g}"
        lr = require(tensors, name)
        check_dtype(name, dtype_name(lr.dtype), torch.float64, "resume", DAMAGED)
        group["lr"] = check_number(name, lr, "a learning rate must be a positive number",
                                   lambda rate: rate > 0)
    sd["state"] = state
    try:
        opt.load_state_dict(sd)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"optimizer state {prefix} does not fit the model: {e}") from None


def _state_entry(name: str, lead: str, count: int) -> tuple[int, str]:
    """(parameter index, key) of `{lead}{index}.{key}`, the index one of the optimizer's and the
    key one Adam keeps (another would ride along unread, or be read by a torch that means
    something else by it)."""
    index, _, key = name[len(lead):].partition(".")
    if not (index.isascii() and index.isdecimal() and len(index) <= MAX_INDEX_DIGITS
            and int(index) < count and key):
        raise CheckpointError(f"checkpoint tensor {shown(name)} is not the state of one of "
                              f"{lead[:-len('.state.')]}'s {count} parameters{DAMAGED}")
    if key not in (*ADAM_MOMENTS, ADAM_STEP):
        raise CheckpointError(f"checkpoint tensor {shown(name)} is not state that Adam keeps "
                              f"({ADAM_STEP}, {', '.join(ADAM_MOMENTS)}){DAMAGED}")
    return int(index), key


def _check_optimizer_tensor(name: str, key: str, value: torch.Tensor, param: torch.Tensor) -> None:
    if key in ADAM_MOMENTS:
        check_dtype(name, dtype_name(value.dtype), param.dtype, "the model", DAMAGED)
        if value.shape != param.shape:
            raise CheckpointError(f"checkpoint tensor {name} is {tuple(value.shape)}, its parameter "
                                  f"is {tuple(param.shape)}{DAMAGED}")
    elif key == ADAM_STEP:
        if value.dtype not in (torch.float32, torch.float64):
            check_dtype(name, dtype_name(value.dtype), torch.float32, "resume", DAMAGED)
        check_number(name, value, "Adam's step must be a whole number from 0 up",
                     lambda count: count >= 0 and float(count).is_integer())


def check_number(name: str, value: torch.Tensor, what: str,
                 valid: Callable[[Any], bool]) -> Any:
    """The one number a tensor of the training state holds (a Python int or float), finite and
    `valid`, else a CheckpointError saying `what` it must be: a negative step or a learning rate
    of 0 loads without a word and fails later as something else (a division by zero, a
    divergence blamed on the learning rates)."""
    check_scalar(name, value)
    number = value.item()
    if isinstance(number, float) and not math.isfinite(number) or not valid(number):
        raise CheckpointError(f"checkpoint tensor {name} is {_number_text(number)}: {what}{DAMAGED}")
    return number


def _number_text(number: Any) -> str:
    """A number for a one-line message: a huge one by its size, not its 4,000 digits."""
    text = str(number)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text)} digits)"


def check_scalar(name: str, value: torch.Tensor) -> None:
    if value.numel() != 1:
        raise CheckpointError(f"checkpoint tensor {name} holds {value.numel()} numbers where resume "
                              f"needs one{DAMAGED}")


def check_finite(path: Path, tensors: dict[str, torch.Tensor], prefix: str,
                 what: str = "weights") -> None:
    """The floating-point tensors `{prefix}.*` hold no NaN or inf: a checkpoint of a run that
    diverged (or a damaged file that passed as one) otherwise samples black images without a
    word, or resumes into a network that never recovers. One pass over each tensor; run after
    the dtypes are checked (a float8 tensor has no isfinite)."""
    lead = prefix + "."
    for name, value in tensors.items():
        if (name.startswith(lead) and value.is_floating_point() and value.dtype.itemsize > 1
                and not bool(torch.isfinite(value).all())):
            raise CheckpointError(f"{path}: {prefix} holds NaN or inf {what} ({shown(name)}): the "
                                  "run diverged or the file is damaged; use an earlier checkpoint")


def check_second_moments(path: Path, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    """Adam's running means of squared gradients are not negative: the update divides by their
    square root, which makes a negative one NaN, and the run would be said to diverge."""
    lead = f"{prefix}.state."
    for name, value in tensors.items():
        if (name.startswith(lead) and name.rpartition(".")[2] in SQUARED_MOMENTS
                and value.is_floating_point() and bool((value < 0).any())):
            raise CheckpointError(f"{path}: checkpoint tensor {shown(name)} holds negative numbers, "
                                  f"where Adam keeps means of squares{DAMAGED}")


def require(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return tensors[name]
    except KeyError:
        raise CheckpointError(f"checkpoint lacks tensor {name!r}; it is incomplete") from None


def module_tensors(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


# --- dtypes ---------------------------------------------------------------------------------

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


def check_dtype(name: str, stored: str, needed: torch.dtype, who: str, advice: str = "") -> None:
    """A tensor of the dtype `who` (the model, resume) needs: a same-size swap (F32 for I32)
    passes every size check and loads as garbage, or fails later inside torch. `advice` ends the
    message where the caller adds none."""
    if stored != dtype_name(needed):
        raise CheckpointError(f"checkpoint tensor {name} is {stored}, {who} needs "
                              f"{dtype_name(needed)}{advice}")


def check_shapes(module: torch.nn.Module, header: Header, prefix: str) -> None:
    """Compare a module's state dict (built on the meta device: no memory) with the header's
    tensors, before anything of the size the config asks for is allocated."""
    lead = prefix + "."
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    stored = {k[len(lead):]: tuple(v["shape"]) for k, v in header.tensors.items() if k.startswith(lead)}
    if expected.keys() != stored.keys():
        missing = sorted(expected.keys() - stored.keys())
        what = f"missing {lead}{missing[0]}" if missing else \
            f"unexpected {lead}{sorted(stored.keys() - expected.keys())[0]}"
        raise CheckpointError(f"checkpoint does not match its config's model ({what})")
    for k, shape in expected.items():
        if stored[k] != shape:
            raise CheckpointError(f"checkpoint tensor {lead}{k} is {stored[k]}, the config's model "
                                  f"needs {shape}")


def check_dtypes(module: torch.nn.Module, header: Header, prefix: str) -> None:
    """The header's tensors of a module (check_shapes: the same names) have the dtypes of the
    module's (built on the meta device, whose tensors carry their dtypes)."""
    lead = prefix + "."
    for k, tensor in module.state_dict().items():
        entry = header.tensors.get(lead + k)
        if entry is not None:
            check_dtype(lead + k, entry["dtype"], tensor.dtype, "the model")


def load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    lead = prefix + "."
    sd = {k[len(lead):]: v for k, v in tensors.items() if k.startswith(lead)}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        what = f"missing {lead}{missing[0]}" if missing else f"unexpected {lead}{unexpected[0]}"
        raise CheckpointError(f"checkpoint does not match its config's model ({what})")
    for k, v in sd.items():
        check_dtype(lead + k, dtype_name(v.dtype), expected[k].dtype, "the model", DAMAGED)
        if v.shape != expected[k].shape:
            raise CheckpointError(f"checkpoint tensor {lead}{k} is {tuple(v.shape)}, the model "
                                  f"needs {tuple(expected[k].shape)}")
    module.load_state_dict(sd)


# --- reading ------------------------------------------------------------------------------

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
            raw = f.read(_header_length(path, f.read(8), size))
    except OSError as e:
        raise _open_error(path, e) from None
    header = _json_header(path, raw)
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
    raw = f.read(_header_length(path, head, size))
    return _parse_header(path, raw, size)


# files often given where a checkpoint goes, by their first bytes: named instead of a header
# length that makes no sense
_NOT_CHECKPOINTS = ((b"PK\x03\x04", "a zip archive (a TorchScript file, such as ganctl export "
                     "writes, or a torch.save file)"), (b"\x80", "a Python pickle (torch.save's "
                     "old format)"), (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
                    (b"\x08", "perhaps an ONNX model"), (b"{", "JSON text (a run's config.json?)"))


def _header_length(path: Path, head: bytes, size: int) -> int:
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


def _json_header(path: Path, raw: bytes) -> dict[str, Any]:
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


def _parse_header(path: Path, raw: bytes, size: int) -> Header:
    header = _json_header(path, raw)
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


def _checksum(data: bytes | memoryview, metadata: dict[str, str]) -> str:
    """sha256 of the data section, then of the other metadata as sorted JSON."""
    digest = hashlib.sha256(data)
    rest = {k: v for k, v in metadata.items() if k != "ganctl.checksum"}
    digest.update(json.dumps(rest, sort_keys=True).encode())
    return "sha256:" + digest.hexdigest()


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

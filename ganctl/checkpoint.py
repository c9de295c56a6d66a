"""The checkpoint file format: one .safetensors file per save, written atomically, read without
pickle. Where checkpoints live in a run (and which one is newest) is rundir.py's.

Layout of a file: tensors `G.*`, `D.*`, `G_ema.*` (module state dicts), `opt_G.*`, `opt_D.*`
(optimizer state), `rng.*` and `state.*` (the rest of the training state); string metadata
`ganctl.version`, `ganctl.schema`, `ganctl.config` (JSON), `ganctl.step`, `ganctl.created`,
`ganctl.metrics` (JSON of the last logged record). Nothing here calls torch.load or pickle:
opening a stranger's checkpoint runs no code.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as safetensors_load
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
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    lead = f"{prefix}.state."
    for name, value in tensors.items():
        if name.startswith(lead):
            index, key = name[len(lead):].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for g, group in enumerate(sd["param_groups"]):
        group["lr"] = float(_require(tensors, f"{prefix}.lr.{g}"))
    sd["state"] = state
    try:
        opt.load_state_dict(sd)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"optimizer state {prefix} does not fit the model: {e}") from None


def _require(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return tensors[name]
    except KeyError:
        raise CheckpointError(f"checkpoint lacks tensor {name!r}; it is incomplete") from None


def module_tensors(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


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
        if v.shape != expected[k].shape or v.dtype != expected[k].dtype:
            raise CheckpointError(
                f"checkpoint tensor {lead}{k} is {v.dtype} {tuple(v.shape)}, the model needs "
                f"{expected[k].dtype} {tuple(expected[k].shape)}"
            )
    module.load_state_dict(sd)


# --- reading ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Header:
    path: Path
    metadata: dict[str, str]
    tensors: dict[str, dict[str, Any]]  # name -> {"dtype": .., "shape": [..], "data_offsets": ..}
    file_size: int
    data_start: int  # 8 + header length: where the tensor bytes begin
    # the whole file as verified (open_checkpoint), so the tensors are read from exactly the
    # bytes that passed the checksum, and the file is read once; None when only the header was
    blob: bytes | None = field(default=None, repr=False, compare=False)

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
        return float(value) if isinstance(value, (int, float)) else None


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


def _read_header(path: Path, f: BinaryIO) -> Header:
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    raw = f.read(_header_length(path, head, size))
    return _parse_header(path, raw, size)


def _header_length(path: Path, head: bytes, size: int) -> int:
    if len(head) < 8:
        raise CheckpointError(f"{path} is truncated or not a safetensors file")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER_BYTES or 8 + n > size:
        raise CheckpointError(f"{path} has a header of {n} bytes in a {size}-byte file: "
                              "truncated, corrupted or not a safetensors file")
    return n


def _parse_header(path: Path, raw: bytes, size: int) -> Header:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"{path} has a corrupted header (not JSON); "
                              "it is not a usable checkpoint") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupted header; it is not a usable checkpoint")
    metadata = header.pop("__metadata__", None) or {}
    _check_metadata(path, metadata)
    _check_tensor_entries(path, header)
    _check_spans(path, header, size - 8 - len(raw))
    return Header(path, metadata, header, size, 8 + len(raw))


_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2,
                "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
_DTYPES = frozenset(_DTYPE_BYTES)


def _check_tensor_entries(path: Path, tensors: dict[str, Any]) -> None:
    for name, info in tensors.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(info, dict) and info.get("dtype") in _DTYPES
                and isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{path} has a corrupted header (entry {name[:80]!r}); it is not "
                                  "a usable checkpoint")


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


def verify(header: Header) -> None:
    """Check the data section matches the checksum in the metadata (in the header's blob if it
    has one, else in the file). Its size was checked when the header was read."""
    path = header.path
    checksum = header.metadata.get("ganctl.checksum")
    if checksum is None:
        raise CheckpointError(f"{path} has no checksum (ganctl.checksum), so it cannot be "
                              "verified; `ganctl inspect --no-verify` shows its header")
    if header.blob is not None:
        digest = hashlib.sha256(memoryview(header.blob)[header.data_start:])
    else:
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                f.seek(header.data_start)
                while block := f.read(8 << 20):
                    digest.update(block)
        except OSError as e:
            raise _open_error(path, e) from None
    rest = {k: v for k, v in header.metadata.items() if k != "ganctl.checksum"}
    digest.update(json.dumps(rest, sort_keys=True).encode())
    if "sha256:" + digest.hexdigest() != checksum:
        raise CheckpointError(f"{path} is corrupted: its data does not match its checksum; use an "
                              "earlier checkpoint")


def _checksum(data: bytes | memoryview, metadata: dict[str, str]) -> str:
    """sha256 of the data section, then of the other metadata as sorted JSON."""
    digest = hashlib.sha256(data)
    rest = {k: v for k, v in metadata.items() if k != "ganctl.checksum"}
    digest.update(json.dumps(rest, sort_keys=True).encode())
    return "sha256:" + digest.hexdigest()


def open_checkpoint(path: Path) -> Header:
    """A checkpoint read whole and verified against its checksum: its header, with the bytes
    (so a file pruned or replaced meanwhile cannot matter to what is loaded from it)."""
    path = Path(path)
    try:
        with open_regular(path) as f:
            header = _read_header(path, f)  # checked against the file's size before more is read
            f.seek(0)
            blob = f.read(header.file_size + 1)
    except OSError as e:
        raise _open_error(path, e) from None
    if len(blob) != header.file_size:
        raise CheckpointError(f"{path} changed while it was read; try again")
    header = replace(header, blob=blob)
    verify(header)
    return header


def _check_metadata(path: Path, metadata: Any) -> None:
    if not isinstance(metadata, dict) or "ganctl.schema" not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a ganctl checkpoint")
    try:
        schema = int(metadata["ganctl.schema"])
        int(metadata["ganctl.step"])
        config = json.loads(metadata["ganctl.config"])
    except (KeyError, ValueError, TypeError, RecursionError):
        raise CheckpointError(f"{path} has damaged ganctl metadata") from None
    if schema > SCHEMA:
        raise CheckpointError(
            f"{path} was written by a newer ganctl (schema {schema}, this one reads "
            f"{SCHEMA}); upgrade ganctl to read it")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} has damaged ganctl metadata (config is not a table)")


def load_tensors(source: Header | Path, prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Tensors (only those starting with one of `prefixes`, if given), on CPU: from a verified
    header's bytes, or read from a file."""
    path = source.path if isinstance(source, Header) else Path(source)
    try:
        if isinstance(source, Header) and source.blob is not None:
            tensors = safetensors_load(source.blob)
            return {k: v for k, v in tensors.items() if not prefixes or k.startswith(prefixes)}
        with safe_open(str(path), framework="pt") as f:
            names = [k for k in f.keys() if not prefixes or k.startswith(prefixes)]
            return {k: f.get_tensor(k) for k in names}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} cannot be read ({e}); it is truncated or "
                              "corrupted") from None

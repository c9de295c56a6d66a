"""CIFAR's python batches, read by walking their pickle opcodes: nothing is unpickled.

pickletools.genops lists a pickle's opcodes and arguments without running any of them, so no
code runs whatever the file holds; the pixels and lists a batch holds are picked out of them.
"""

from __future__ import annotations

import struct
from pathlib import Path
from pickletools import genops

from ganctl.data.datafile import read_data_file
from ganctl.data.sources import damaged

_LIST_KEYS = frozenset({"labels", "fine_labels", "coarse_labels", "label_names",
                        "fine_label_names", "coarse_label_names"})
_INT_OPS = frozenset({"BININT1", "BININT2", "BININT", "INT", "LONG1"})
# Python 3 writes bytes at protocol 2 as _codecs.encode('<text>', 'latin1'): the codec name,
# the tuple and the call sit between a key and its list.
# Protocols 4 and 5 cut long lists into FRAMEs, which say nothing about the data.
_STRUCTURE_OPS = frozenset({"BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE", "BINGET", "LONG_BINGET",
                            "GET", "TUPLE2", "REDUCE", "FRAME", "PROTO"})
_CODEC_NAMES = frozenset({"latin1", "latin-1"})


def read_cifar_pickle(path: Path) -> dict[str, list]:
    """The pixel bytes and lists of a CIFAR python batch, read from its opcodes, not unpickled.

    Returns {'data': [bytes], 'labels' / 'fine_labels' / 'label_names' ...: [items]}: the longest
    byte string is the (N, 3072) pixel array, and a key string is followed by its list's items.
    """
    out: dict[str, list] = {"data": [b""]}
    key: str | None = None  # the list being read, if any
    inside = False  # between the list's opening (EMPTY_LIST / MARK) and its APPEND(S)
    try:
        for op, arg, _ in genops(read_data_file(path)):
            name = op.name
            if key is not None and inside and name in _INT_OPS:
                out[key].append(int(arg))  # type: ignore[arg-type]  # an int opcode's argument
            elif isinstance(arg, (str, bytes, bytearray)) and "GLOBAL" not in name:
                raw = arg.encode("latin-1") if isinstance(arg, str) else bytes(arg)
                text = raw.decode("latin-1")
                if key is not None and text in _CODEC_NAMES:
                    continue
                if key is not None and inside and text not in _LIST_KEYS:
                    out[key].append(text)
                    continue
                key = text if text in _LIST_KEYS else None
                if key is not None:
                    out[key], inside = [], False
                elif len(raw) > len(out["data"][0]):
                    out["data"] = [raw]
            elif name in ("EMPTY_LIST", "MARK"):
                inside = True
            elif name in ("APPENDS", "APPEND"):
                inside = False
            elif name not in _STRUCTURE_OPS:
                key = None
    except (ValueError, EOFError, struct.error) as e:  # genops' cut or unknown opcodes, bad text
        raise damaged(path, f"pickle: {e}") from None
    return out

"""One setting's value checked against its type, and a wrong value quoted in a message.

The config (config.py) checks every field with these, as do the places values come in before a
Config is made (a config file, the API's keyword arguments, a checkpoint's header): the error
names the key, where the value came from, and the type the key wants.
"""

from __future__ import annotations

import datetime
import math
import os
import sys
from typing import Any

from ganctl.errors import ConfigError

_TYPES: dict[str, type | tuple[type, ...]] = {"int": int, "float": (int, float), "str": str,
                                             "bool": bool}
WANTED = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
          "tuple[str, ...]": "a list of strings"}
SHOWN_CHARS = 60  # of a wrong value quoted in a message
FLOAT_MAX = sys.float_info.max
# Keys whose strings name files: there a string may carry the bytes of a file name that is not
# UTF-8, as Python reads them from the command line or a folder (surrogate escapes, U+DC80 to
# U+DCFF); classes too, since they are folder names. Every other string is text.
FILE_NAME_KEYS = frozenset({"dataset", "data_dir", "inception", "init_from", "classes",
                            "backbone_weights"})


def check_type(name: str, value: Any, kind: str, where: str = "", wanted: str = "") -> None:
    """ConfigError unless `value` is of the field type `kind` ("int", "float", "str", "bool",
    "tuple[str, ...]"); an int is a float (1 in a file means 1.0), a bool is never a number.
    `wanted` says what the key takes where it takes more than its type (batch_size "auto")."""
    if kind == "tuple[str, ...]":
        good = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    else:
        good = isinstance(value, _TYPES[kind]) and (kind == "bool" or not isinstance(value, bool))
    prefix = f"{where}: " if where else ""
    if not good:
        raise ConfigError(f"{prefix}{name} must be {wanted or WANTED[kind]}, got {shown(value)}")
    for text in (value if kind == "tuple[str, ...]" else [value] if kind == "str" else []):
        _check_text(name, text, prefix)
    if kind == "float" and isinstance(value, int) and not -FLOAT_MAX <= value <= FLOAT_MAX:
        raise ConfigError(f"{prefix}{name} must be a number a float can hold (at most about "
                          f"1.8e308), got {shown(value)}")


def _check_text(name: str, text: str, prefix: str) -> None:
    """ConfigError unless `text` is text: no NUL (no path or name holds one; the OS refuses it),
    no lone surrogate (JSON's "\\ud800" makes one: it is no character, and no file name or
    output can hold it)."""
    if "\0" in text:
        raise ConfigError(f"{prefix}{name} must be a string without NUL characters, got "
                          f"{shown(text)}")
    try:
        if name in FILE_NAME_KEYS:
            os.fsencode(text)
        else:
            text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(f"{prefix}{name} must be text, got {shown(text)}: it holds a lone "
                          f"surrogate ({ascii(e.object[e.start])[1:-1]}), which is no character; "
                          "write the character itself") from None


def shown(value: Any) -> str:
    """A value as a message quotes it: in a config file's own words where it has them (true,
    null, a table, a date), and short (a number of a thousand digits, a long list)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (datetime.date, datetime.time)):  # TOML's dates and times
        what = ("a date and time" if isinstance(value, datetime.datetime)
                else "a date" if isinstance(value, datetime.date) else "a time")
        return f"{value.isoformat()} ({what})"
    if isinstance(value, int) and value.bit_length() > 3 * SHOWN_CHARS:  # str() may refuse it
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        text = repr(value)
    except ValueError:  # a list holding an integer of over 4300 digits
        return f"a {type(value).__name__}"
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 1] + "…"


ABOVE_LOW = ("lr_g", "lr_d")  # their lower bound itself is not allowed
_BOUND_HINTS = {"keep": " (0 keeps every checkpoint)", "eval_every": " (0: no evaluation)",
                "eval_num_real": " (0: all)", "batch_size": ", or auto (the largest that fits)"}


def check_range(name: str, value: Any, bounds: tuple[float, float] | None,
                choices: tuple[str, ...] = ()) -> None:
    """A number within its bounds (checked before torch or the disk sees a value), a string one
    of its choices."""
    if choices and value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {shown(value)}")
    if bounds is None:
        return
    low, high = bounds
    above = name in ABOVE_LOW
    if value != value or not low <= value <= high or (above and value == low):  # NaN != NaN
        what = "a whole number" if isinstance(value, int) else "a number"
        span = f"above {low} and at most {high}" if above else f"from {low} to {high}"
        raise ConfigError(f"{name} must be {what} {span}, got {shown(value)}"
                          + _BOUND_HINTS.get(name, ""))

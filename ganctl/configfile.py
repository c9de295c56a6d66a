"""Config files: a flat TOML (or JSON) file of config keys, read and checked key by key.

`ganctl train --config F` and `ganctl.train(config=F)` read them; the values are checked for
their keys and types here, and for their ranges when the Config is made (config.py).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from ganctl.config import FIELD_TYPES, check_keys, check_types
from ganctl.errors import ConfigError, first_line, shorten
from ganctl.fsutil import NotRegularFile, read_regular


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a flat TOML (or JSON) file of config keys; validates the keys, not the values."""
    path = Path(path)
    try:
        text = read_regular(path, 1 << 20).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the path") from None
    except NotRegularFile:
        raise ConfigError(f"config file {path} is not a regular file (a FIFO?); pass a TOML "
                          "or JSON file") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        values = (json.loads(text, object_pairs_hook=_refuse_duplicates) if path.suffix == ".json"
                  else tomllib.loads(text))
    except DuplicateKey as e:  # TOML refuses them itself; JSON would keep the last silently
        raise ConfigError(f"config file {path} gives {shorten(e.key)} twice; keep one") from None
    except ValueError as e:  # TOMLDecodeError, JSONDecodeError, a number of over 4300 digits
        raise ConfigError(f"config file {path} is not valid {_kind(path)}: "
                          f"{first_line(e)}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply; write flat keys") from None
    flat = "a flat object of keys" if _kind(path) == "JSON" else "flat `key = value` lines"
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold {flat}")
    keys = [k.replace("-", "_") for k in values]
    if twice := sorted({k for k in keys if keys.count(k) > 1}):
        raise ConfigError(f"config file {path} gives {twice[0]} twice (as - and _); keep one")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    for key, value in values.items():
        if isinstance(value, dict) and key not in FIELD_TYPES:  # a [section] header
            raise ConfigError(f"config file {path}: {key} is a table; write {flat}")
    check_keys(values, str(path))
    check_types(values, f"config file {path}")
    return values


class DuplicateKey(Exception):
    """A JSON object that gives one key twice (json.loads would keep the last of them)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object_pairs_hook: a key given twice is refused, as TOML and checkpoint headers
    refuse it, instead of the last one winning unseen."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


def _kind(path: Path) -> str:
    return "JSON" if path.suffix == ".json" else "TOML"

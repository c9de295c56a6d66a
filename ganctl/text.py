"""Text for people, in one place: escaping (what a terminal is never sent), byte sizes and
dates."""

from __future__ import annotations

import re
from datetime import datetime

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline


def printable(text: str) -> str:
    """Control characters (a terminal escape in a folder name or a checkpoint's metadata) shown
    as \\xNN, never sent to the terminal; a file name's bytes that are not UTF-8 (surrogates
    to Python) as \\udcNN, which every terminal's encoding can write."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def one_line(text: str) -> str:
    """printable(text) with its line breaks shown as \\n and \\r: an error or a table cell stays
    one line whatever a value quoted in it (a path, a setting) holds."""
    return printable(text.replace("\r", "\\r").replace("\n", "\\n"))


def printable_cell(text: str, limit: int) -> str:
    """`text` as one line of at most `limit` characters for a table: control and other
    unprintable characters (a newline in a folder name, a terminal escape) escaped as \\n,
    \\xNN or \\uNNNN, never sent to the terminal; a longer one cut, ending in "…"."""
    out = "".join(c if c.isprintable() or c == " " else _escape(c) for c in text)
    return out if len(out) <= limit else out[:max(0, limit - 1)] + "…"


def _escape(char: str) -> str:
    escaped = repr(char)[1:-1]  # \n, \t, \x1b, \u202e
    if escaped == char:  # repr kept it as it is (some unprintable characters it leaves)
        code = ord(char)
        escaped = f"\\x{code:02x}" if code < 0x100 else (
            f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return escaped


def human_bytes(n: int) -> str:
    """Decimal units, as disks are sold and `ls -lh --si` shows: 512 B, 12.3 MB, 1.5 GB."""
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    value, unit = float(n), 0
    while value >= 999.95 and unit < len(units) - 1:  # 999,999 B is 1.0 MB, not 1000.0 kB
        value, unit = value / 1000, unit + 1
    return f"{n} B" if unit == 0 else f"{value:.1f} {units[unit]}"


def _when(value: object) -> datetime:
    """A time given as seconds since the epoch or ISO 8601 text, in local time (ValueError,
    OverflowError, OSError or TypeError when it is none a date can hold)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value).astimezone()
    return datetime.fromisoformat(value).astimezone()  # type: ignore[arg-type]


def iso_time(value: object) -> str | None:
    """ISO 8601 in local time; None for none, or a time no date can hold (a file's mtime set
    to year 300000)."""
    try:
        return _when(value).isoformat(timespec="seconds") if value is not None else None
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def minute(value: object) -> str:
    """`2026-11-28 07:12` in this machine's time zone; "-" for what is not a time."""
    try:
        return _when(value).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"


def date_time(value: object) -> str:
    """A local date and time with its zone; what is not a time, as it is."""
    try:
        return _when(value if isinstance(value, (int, float)) else str(value)).strftime(
            "%Y-%m-%d %H:%M:%S %Z").strip()
    except (TypeError, ValueError, OverflowError, OSError):
        return str(value)

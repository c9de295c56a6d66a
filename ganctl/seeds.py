"""Seeds as users give them: "0-63,100" on the command line, an int, a range or a list in
Python; each checked to be a whole number from 0 to MAX_SEED, and written back compactly.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence, Set, Sized

from ganctl.errors import ConfigError, shorten

MAX_SEED = 2**63 - 1  # what a torch.Generator seed and the seeds of `ganctl sample` reach
MAX_SEEDS = 100_000  # seeds in one call: a typo such as 0-1000000000 is an error, not a hang
Seeds = int | str | range | Sequence[int]  # 7, "0-63,100", range(16), [3, 1, 4]
SEEDS_LIKE = "give one seed or more, like 7, range(16), [3, 1, 4] or '0-63,100'"
TOO_MANY = f"more than {MAX_SEEDS} seeds at once (generate in parts: an image depends on its seed alone)"
SEED_PART = re.compile(r"^([0-9]{1,19})(?:-([0-9]{1,19}))?$")  # 7 or 0-63, ASCII digits: "+7", "٣" fail


def parse_seeds(text: str) -> list[int]:
    """'0-63,100' -> [0, 1, ..., 63, 100]: single seeds and inclusive ranges, comma-separated."""
    seeds: list[int] = []
    for part in text.split(","):
        match = SEED_PART.match(part.strip())
        if match is None:
            what = (f"{shorten(part.strip(), 40)} is not a seed (0 to 2**63 - 1) or a range of them"
                    if part.strip() else "an empty part")
            raise _seeds_error(text, what)
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise _seeds_error(text, f"range {low}-{high} runs backwards (write {high}-{low})")
        if high > MAX_SEED:
            raise _seeds_error(text, f"seed {high} is past the largest, 2**63 - 1")
        if len(seeds) + high - low + 1 > MAX_SEEDS:
            raise _seeds_error(text, TOO_MANY)
        seeds.extend(range(low, high + 1))
    return seeds


def _seeds_error(text: str, what: str) -> ConfigError:
    return ConfigError(f"seeds {shorten(text, 60)}: {what}; write seeds like 0-63,100 (single seeds "
                       "and ranges, comma-separated)")


def seed_list(seeds: Seeds, limit: int = MAX_SEEDS) -> list[int]:
    """The seeds of an int (one seed), a "0-63,100" string, a range or a sequence of ints
    (numpy's and torch's integers and 1-d arrays of them too), each checked to be a whole number
    from 0 to MAX_SEED; from 1 to MAX_SEEDS of them. Not bytes (b"0-3" iterates as the numbers
    48, 45, 51), a dict or a set (no order), nor an iterator (its length is unknown and reading
    it consumes it). `limit`: the most seeds (an export to files takes more than a call)."""
    if isinstance(seeds, str):
        return parse_seeds(seeds)
    one = whole(seeds)
    if one is not None:
        return [_seed(one)]
    if (isinstance(seeds, (bool, bytes, bytearray, memoryview, Mapping, Set))
            or not isinstance(seeds, Sized)):
        raise ConfigError(f"seeds {brief_repr(seeds)}: {SEEDS_LIKE}")
    try:
        count = len(seeds)
    except OverflowError:  # range(10**20): more than an index holds
        raise ConfigError(f"seeds {brief_repr(seeds)}: {TOO_MANY}") from None
    except TypeError:  # a 0-d array: Sized, yet without a length
        raise ConfigError(f"seeds {brief_repr(seeds)}: {SEEDS_LIKE}") from None
    if not count:
        raise ConfigError(f"seeds {brief_repr(seeds)}: {SEEDS_LIKE}")
    if count > limit:
        raise ConfigError(f"{count} seeds: more than {limit} seeds at once (generate in parts: an "
                          "image depends on its seed alone)")
    if isinstance(seeds, range):  # its smallest and largest seeds are its ends
        _seed(min(seeds[0], seeds[-1]))
        _seed(max(seeds[0], seeds[-1]))
        return list(seeds)
    return [_seed(s) for s in seeds]


def whole(value: object) -> int | None:
    """value as an int if it is a whole number: an int or anything with __index__ (numpy's and
    torch's integer scalars), not a bool, 2.0 or "3"; else None."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        return None
    try:
        return operator.index(value)
    except TypeError:  # an array of several, or of floats
        return None


def brief_repr(value: object, limit: int = 100) -> str:
    """repr(value), cut to `limit` characters: a message stays one readable line."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _seed(s: object) -> int:
    """A seed as an int: int or numpy's integers (anything with __index__), not 2.0 or "3"."""
    seed = whole(s)
    if seed is None or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed {brief_repr(s)} is not a whole number from 0 to 2**63 - 1; {SEEDS_LIKE}")
    return seed


def compact_seeds(seeds: Sequence[int]) -> str:
    """Seeds as `--seeds` takes them: runs of consecutive seeds as ranges ("0-63,100")."""
    parts: list[str] = []
    start = prev = None
    for s in seeds:
        if start is not None and s == prev + 1:  # type: ignore[operator]
            prev = s
            continue
        if start is not None:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
        start = prev = s
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ",".join(parts)

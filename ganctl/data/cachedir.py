"""What the cache folder holds, for people: `ganctl data cache list` and `clean` (decoded datasets
and real FID statistics, by name, kind and state). The cache itself is data/cache.py."""

from __future__ import annotations

import json
import os
import re
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganctl import fsutil
from ganctl.data.cache import MAX_META, default_cache_dir
from ganctl.errors import DataError
from ganctl.text import human_bytes, iso_time, minute, printable_cell

# Beside the decoded sets, evaluate.py keeps the real statistics of FID/KID/PR in the same dir:
# <dataset>-<key>.stats.safetensors (metrics/stats.py writes it, "ganctl.stats" metadata). Only
# files ganctl writes are listed and removed, each recognised by its name and its content (a
# decode's .json names its key, an .npy starts with numpy's magic, statistics carry their
# metadata); a user's other files there, folders and links are never touched.

STATS_SUFFIX = ".stats.safetensors"
_KEY = r"[0-9a-f]{16}"  # cache_key and metrics.stats.stats_key: 16 hex digits
_DECODED_RE = re.compile(rf"^(?P<stem>.+-{_KEY})\.(?P<part>json|images\.npy|labels\.npy)$")
_STATS_RE = re.compile(rf"^(?P<stem>.+-{_KEY})\.stats\.safetensors$")
# build()'s .raw/.npy temps and fsutil.atomic_write's temps of the files above
_TEMP_RE = re.compile(rf"^\.(?P<stem>.+-{_KEY})\.(?P<part>raw|npy|json|images\.npy|labels\.npy"
                      r"|stats\.safetensors)\.tmp-(?P<pid>\d+)$")
NPY_MAGIC = b"\x93NUMPY"
# A temp file is being written while it was modified this recently (seconds): a build appends
# to its temp continuously (chunk after chunk of decoded images, then the copy into the .npy),
# so an older one was left by a build that died, whatever its name's PID says now: that PID
# may have been reused by any process (1, a shell), and a build on another machine of a shared
# disk has a PID that means nothing here. (A build suspended longer than this may have its
# temps removed by `clean`; it then fails with a clear error and the next run builds again.)
STALE_AFTER = 600.0
DECODED, FID_STATS = "decoded", "fid_stats"
KIND_LABELS = {DECODED: "decoded images", FID_STATS: "FID statistics"}


@dataclass(frozen=True)
class CacheFile:
    path: Path
    bytes: int
    mtime: float
    atime: float
    identity: tuple[int, int, int, int]  # (device, inode, mtime_ns, size) when listed

    def unchanged(self) -> bool:
        """Still the regular file that was listed (not replaced by a new build since)."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and _identity(st) == self.identity


@dataclass(frozen=True)
class Cached:
    """One decoded dataset or one set of real statistics in the cache dir, with its files.
    state: "complete"; "partial" (left by a build that died: no use to anyone); "writing" (a
    process is building it now: one of its temp files was modified in the last STALE_AFTER
    seconds; clean_caches leaves it alone)."""

    name: str  # <dataset>-<key>, the stem all its files share
    kind: str  # DECODED or FID_STATS
    state: str
    files: tuple[CacheFile, ...]
    source: dict[str, Any]  # from its metadata: dataset, origin, count, resolution, channels, crop

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def dataset(self) -> str:
        """The dataset as its metadata names it (a path, for a folder), else as the name does."""
        return str(self.source.get("dataset") or self.slug)

    @property
    def slug(self) -> str:
        return self.name.rsplit("-", 1)[0]  # the name less its "-<key>"

    @property
    def last_used(self) -> float:
        """When it was last read, as far as the filesystem says: atime, which most mounts
        (relatime) update at most once a day, and not at all with noatime; at least its mtime."""
        return max(max(f.atime, f.mtime) for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "state": self.state,
                "dataset": self.dataset, "bytes": self.bytes,
                "files": [f.path.name for f in self.files],
                "modified": iso_time(max(f.mtime for f in self.files)),
                "last_used": iso_time(self.last_used), "source": self.source}


def list_caches(cache_dir: Path | None = None) -> list[Cached]:
    """What ganctl keeps in the cache dir (default: default_cache_dir()), by name then kind."""
    cache_dir = cache_dir or default_cache_dir()
    try:
        entries = [e for e in os.scandir(cache_dir) if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    except OSError as e:
        raise DataError(f"cannot list the cache dir {cache_dir}: {e.strerror}") from None
    groups: dict[tuple[str, str], dict[str, tuple[Path, os.stat_result]]] = {}
    for entry in entries:
        if (found := _classify(entry.name)) is not None:
            kind, stem, part = found
            try:
                groups.setdefault((stem, kind), {})[part] = (Path(entry.path), entry.stat(
                    follow_symlinks=False))
            except OSError:  # removed meanwhile
                continue
    listed = (_group(stem, kind, parts) for (stem, kind), parts in sorted(groups.items()))
    return [c for c in listed if c is not None]


def _classify(name: str) -> tuple[str, str, str] | None:
    """(kind, stem, part) of a name ganctl writes in the cache dir; None for any other name."""
    if m := _DECODED_RE.match(name):
        return DECODED, m["stem"], m["part"]
    if m := _STATS_RE.match(name):
        return FID_STATS, m["stem"], "stats"
    if m := _TEMP_RE.match(name):
        kind = FID_STATS if m["part"] == "stats.safetensors" else DECODED
        return kind, m["stem"], f"tmp:{m['part']}:{m['pid']}"
    return None


def _group(stem: str, kind: str, parts: dict[str, tuple[Path, os.stat_result]]) -> Cached | None:
    """The entry of one stem's files, keeping those whose content is ganctl's; None if none is."""
    source: dict[str, Any] | None = None
    if kind == DECODED and "json" in parts:
        source = _decoded_source(parts["json"][0], stem)
        if source is None:  # someone else's .json: not ours to list or remove
            del parts["json"]
    if kind == FID_STATS and "stats" in parts:
        source = _stats_source(parts["stats"][0])
        if source is None:
            del parts["stats"]
    for part in ("images.npy", "labels.npy"):
        if part in parts and not _is_npy(parts[part][0]):
            del parts[part]
    if not parts:
        return None
    now = time.time()
    temps = [st for part, (_, st) in parts.items() if part.startswith("tmp:")]
    if any(now - st.st_mtime < STALE_AFTER for st in temps):  # see STALE_AFTER
        state = "writing"
    else:
        state = "complete" if source is not None else "partial"
    # the file whose presence means "done" first: removing it first, a reader never finds a set
    # announced complete with a file missing (it rebuilds instead)
    order = sorted(parts.items(), key=lambda item: (item[0] not in ("json", "stats"),
                                                    item[1][0].name))
    files = tuple(CacheFile(path, st.st_size, st.st_mtime, st.st_atime, _identity(st))
                  for _, (path, st) in order)
    return Cached(stem, kind, state, files, source or {})


def _decoded_source(path: Path, stem: str) -> dict[str, Any] | None:
    try:
        meta = json.loads(fsutil.read_regular(path, MAX_META).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(meta, dict) or not stem.endswith("-" + str(meta.get("fingerprint"))):
        return None
    return {"dataset": meta.get("name"), "origin": meta.get("origin"), "count": meta.get("count"),
            **{k: meta.get(k) for k in ("resolution", "channels", "crop")}}


def _stats_source(path: Path) -> dict[str, Any] | None:
    """The statistics' own metadata (save_stats' "ganctl.stats"), read from the header alone."""
    try:
        with fsutil.open_regular(path) as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 <= n <= min(MAX_META, os.fstat(f.fileno()).st_size - 8):
                return None
            header = json.loads(f.read(n))
        meta = json.loads(header["__metadata__"]["ganctl.stats"])
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError):
        return None
    if not isinstance(meta, dict):
        return None
    return {k: meta.get(k) for k in ("dataset", "count", "resolution", "channels", "crop")}


def _is_npy(path: Path) -> bool:
    try:
        with fsutil.open_regular(path) as f:
            return f.read(len(NPY_MAGIC)) == NPY_MAGIC
    except OSError:
        return False


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def select_caches(entries: list[Cached], names: list[str]) -> list[Cached]:
    """The entries a name picks: its full name (<dataset>-<key>) or its dataset (every cache of
    it). A name that picks none is an error that lists what there is."""
    picked = [e for e in entries if any(n in (e.name, e.dataset, e.slug) for n in names)]
    for name in names:
        if not any(name in (e.name, e.dataset, e.slug) for e in entries):
            known = sorted({e.slug for e in entries})
            raise DataError(f"no cache of {name!r}; " + (
                f"cached: {', '.join(known)}" if known else "the cache is empty"))
    return picked


def clean_caches(entries: list[Cached]) -> int:
    """Remove the entries' files; returns the bytes freed. An entry being written is left alone,
    and so is any file that changed since it was listed (a new build in its place). A training
    run that has a decoded set open keeps reading it (its memory map holds the data until it
    closes); one that starts later decodes the data again."""
    freed = 0
    for entry in entries:
        if entry.state == "writing":
            continue
        for f in entry.files:
            if f.unchanged():
                try:
                    f.path.unlink()
                except FileNotFoundError:  # another clean got there first
                    continue
                except OSError as e:
                    raise DataError(f"cannot remove {f.path}: {e.strerror}; {human_bytes(freed)} "
                                    "freed before it") from None
                freed += f.bytes
    return freed


def format_caches(entries: list[Cached], cache_dir: Path | None = None) -> str:
    """An aligned table of list_caches' entries and their total, for people."""
    cache_dir = cache_dir or default_cache_dir()
    if not entries:
        return f"no caches in {cache_dir}"
    rows: list[tuple[str, ...]] = [
        ("NAME", "KIND", "STATE", "IMAGES", "RES", "SIZE", "LAST USED", "SOURCE")]
    for e in entries:
        s = e.source
        res = (f"{s['resolution']}x{s['resolution']}x{s['channels']}"
               if s.get("resolution") and s.get("channels") else "-")
        rows.append(tuple(printable_cell(cell, 256) for cell in (
            e.name, KIND_LABELS[e.kind], e.state, str(s.get("count") or "-"), res,
            human_bytes(e.bytes), minute(e.last_used),
            str(s.get("origin") or s.get("dataset") or "-"))))
    right = {3, 4, 5}
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    total = sum(e.bytes for e in entries)
    count = f"{len(entries)} cache{'s' if len(entries) != 1 else ''}"
    return "\n".join([*lines, printable_cell(f"{human_bytes(total)} in {count} in {cache_dir}",
                                             4096)])

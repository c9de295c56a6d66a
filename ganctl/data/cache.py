"""The decode cache: every image decoded and resized once into a memory-mapped uint8 .npy.

A cache is keyed by the source's fingerprint and the decode settings (resolution, channels,
crop), so a changed source or setting makes a new one and an unchanged one is reused. Files,
under the cache dir (env GANCTL_CACHE_DIR, default ~/.cache/ganctl/decoded):
  <name>-<key>.images.npy   (N, C, R, R) uint8
  <name>-<key>.labels.npy   (N,) int64
  <name>-<key>.json         count, classes, skip report; written last: its presence means done
All are written to temporary files and renamed into place; .npy files are read with
allow_pickle=False.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import stat
import struct
import threading
import time
import tokenize
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ganctl import fsutil
from ganctl.data.decode import Skip, decode, from_array
from ganctl.data.sources import Source
from ganctl.errors import DataError
from ganctl.fsutil import atomic_write
from ganctl.text import human_bytes, iso_time, minute, one_line, printable_cell

VERSION = 3  # bump when decoding (or the cache's files) change, so old caches are not reused
CHUNK = 256  # items decoded per task
RAW_BUDGET = 512 << 20  # bytes of encoded files the decode threads hold at once
Progress = Callable[[int], None]  # advance by n items


def default_cache_dir() -> Path:
    if env := os.environ.get("GANCTL_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ganctl" / "decoded"


@dataclass(frozen=True)
class Decoded:
    images: np.ndarray  # (N, C, R, R) uint8, memory-mapped
    labels: np.ndarray  # (N,) int64, -1 where there is no class
    classes: list[str]
    fingerprint: str  # of the decoded content: survives copying the data elsewhere
    meta: dict[str, Any]  # what the .json holds: counts, classes, skip report
    path: Path  # the .images.npy file


def cache_key(source: Source, resolution: int, channels: int, crop: str) -> str:
    raw = json.dumps([VERSION, source.fingerprint, resolution, channels, crop])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _stem(source: Source, key: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(source.name).name).strip("_") or "data"
    return f"{name}-{key}"


def _files(base: Path) -> tuple[Path, Path, Path]:
    """(.json, .images.npy, .labels.npy) beside each other; the stem itself may hold dots."""
    meta, images, labels = (base.with_name(base.name + ext)
                            for ext in (".json", ".images.npy", ".labels.npy"))
    return meta, images, labels


class Damaged(Exception):
    """A cache whose files cannot be what build() wrote; args[0] says what is wrong."""


# what reading a damaged .json or .npy raises: a cut or garbled header or body (numpy tokenizes
# the header and parses it with ast.literal_eval), text that is not UTF-8, JSON nested past
# the stack
READ_ERRORS = (OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError, RecursionError,
               struct.error)


def _load(base: Path, resolution: int, channels: int, classes: list[str]) -> Decoded | None:
    """The cache at base; None when there is none (its .json, written last, is absent: never
    built, or a build that died). Damaged(what) when its files are not what build() wrote for a
    source of these `classes`: cut, garbled, of another shape, a description that is not
    build()'s, or labels outside the classes."""
    meta_path, images_path, labels_path = _files(base)
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(fsutil.read_regular(meta_path, MAX_META).decode("utf-8"))
        images = np.load(images_path, mmap_mode="r", allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False)
    except FileNotFoundError as e:
        raise Damaged(f"{Path(e.filename or images_path).name} is missing") from None
    except READ_ERRORS as e:
        raise Damaged(f"{type(e).__name__}: {' '.join(str(e).split())[:100]}") from None
    _check_meta(meta, meta_path, base, classes)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[1:] != (channels, resolution, resolution) \
            or images.shape[0] != meta.get("count") or images.shape[0] == 0:
        raise Damaged(f"{images_path.name} does not hold the {meta.get('count')} images "
                      f"of {channels}x{resolution}x{resolution} its .json promises")
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 \
            or labels.shape != (images.shape[0],) \
            or ((labels < -1) | (labels >= len(classes))).any():
        raise Damaged(f"{labels_path.name} does not hold a label (or -1) for each image")
    return Decoded(images, labels, list(classes), meta["content_fingerprint"], meta, images_path)


def _check_meta(meta: Any, meta_path: Path, base: Path, classes: list[str]) -> None:
    """Damaged unless the .json is what build() wrote for this cache: its key (the end of the
    file name) and version, and the source's own class list, which is fixed by the source (its
    class folders, a named dataset's classes) as the key is. A description with another class
    list (a damaged one of 100,000 names) would reach reports, the config and the checkpoint.
    The skip report, shown to the user, is counts by reason that add up."""
    if not isinstance(meta, dict) or not isinstance(meta.get("content_fingerprint"), str) \
            or not isinstance(meta.get("classes"), list) or not _is_count(meta.get("count")) \
            or not base.name.endswith(f"-{meta.get('fingerprint')}") \
            or meta.get("version") != VERSION:
        raise Damaged(f"{meta_path.name} is not a decode's description")
    if meta["classes"] != classes:
        raise Damaged(f"{meta_path.name} lists {_count(meta['classes'], 'class', 'classes')}, "
                      f"not the {_count(classes, 'class', 'classes')} of the source")
    reasons, skipped = meta.get("skipped_by_reason"), meta.get("skipped")
    if not _is_count(skipped) or not isinstance(reasons, dict) \
            or not all(isinstance(r, str) and _is_count(n) and n > 0 for r, n in reasons.items()) \
            or sum(reasons.values()) != skipped:
        raise Damaged(f"{meta_path.name} has no skip report of build()'s kind")


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _count(items: list, one: str, many: str) -> str:
    return f"{len(items)} {one if len(items) == 1 else many}"


class ByteBudget:
    """Bytes the decode threads may hold at once: a read waits until it fits (one read alone
    always fits, so a single large file cannot stall the build)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, n: int) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


def _decode_one(source: Source, i: int, resolution: int, channels: int, crop: str,
                budget: ByteBudget) -> np.ndarray:
    """One item decoded; any failure to use it (unreadable, too large, a decoder's own error,
    out of memory) is a Skip with its reason, counted, never the end of the build."""
    size = int(source.sizes[i]) if source.sizes is not None else 0
    try:
        with budget.hold(size):
            raw = source.read(i)
            if source.encoded:
                return decode(raw, resolution, channels, crop)  # type: ignore[arg-type]
            return from_array(raw, resolution, channels, crop)  # type: ignore[arg-type]
    except Skip:
        raise
    except MemoryError:
        raise Skip("out of memory") from None
    except OSError:
        raise Skip("unreadable") from None
    except Exception as e:  # a decoder's own bug on a hostile file: that file is skipped
        raise Skip(f"decoder error ({type(e).__name__})") from None


def _decode_all(source: Source, resolution: int, channels: int, crop: str, workers: int
                ) -> Iterator[list[tuple[int, np.ndarray | str]]]:
    """Chunks of (index, array or skip reason), in source order, decoded by a thread pool that
    holds at most RAW_BUDGET bytes of files and 2 x workers chunks of results at a time."""
    budget = ByteBudget(RAW_BUDGET)

    def work(start: int) -> list[tuple[int, np.ndarray | str]]:
        out: list[tuple[int, np.ndarray | str]] = []
        for i in range(start, min(start + CHUNK, len(source))):
            try:
                out.append((i, _decode_one(source, i, resolution, channels, crop, budget)))
            except Skip as skip:
                out.append((i, skip.reason))
        return out

    starts = iter(range(0, len(source), CHUNK))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque(pool.submit(work, start) for start in islice(starts, 2 * workers))
        while pending:
            chunk = pending.popleft().result()
            for start in islice(starts, 1):
                pending.append(pool.submit(work, start))
            yield chunk


def build(source: Source, resolution: int, channels: int, crop: str, cache_dir: Path,
          progress: Progress | None = None) -> Decoded:
    key = cache_key(source, resolution, channels, crop)
    base = cache_dir / _stem(source, key)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the cache dir {cache_dir}: {e.strerror}; "
                        f"{_write_advice(e, cache_dir)}") from None
    _check_nothing_in_the_way(base)
    tmp_raw = base.with_name(f".{base.name}.raw.tmp-{os.getpid()}")
    tmp_npy = base.with_name(f".{base.name}.npy.tmp-{os.getpid()}")
    labels: list[int] = []
    skipped: list[dict[str, str]] = [{"file": f, "reason": r} for f, r in source.ignored]
    content = hashlib.sha256()  # of the pixels, then the labels: what the run trains on
    workers = max(1, min(16, os.cpu_count() or 1))
    try:
        with open(tmp_raw, "wb") as raw:
            for chunk in _decode_all(source, resolution, channels, crop, workers):
                for i, result in chunk:
                    if isinstance(result, str):
                        skipped.append({"file": source.keys[i], "reason": result})
                    else:
                        pixels = result.tobytes()
                        raw.write(pixels)
                        content.update(pixels)
                        labels.append(int(source.labels[i]))
                if progress:
                    progress(len(chunk))
        count = len(labels)
        if count == 0:
            reasons = Counter(s["reason"] for s in skipped)
            raise DataError(f"dataset {source.name!r} has no usable image in {source.origin}"
                            + (f" ({_summary(reasons)} skipped)" if reasons else "")
                            + "; it needs readable images (jpg, png, webp, bmp, gif, tiff): "
                              "replace the damaged ones or pass another dataset")
        _npy_from_raw(tmp_raw, tmp_npy, (count, channels, resolution, resolution))
        meta_path, images_path, labels_path = _files(base)
        os.replace(tmp_npy, images_path)
        label_array = np.array(labels, dtype=np.int64)
        atomic_write(labels_path, _npy_bytes(label_array))
        content.update(label_array.tobytes())
        reasons = Counter(s["reason"] for s in skipped)
        meta = {"version": VERSION, "name": source.name, "origin": source.origin,
                "source_fingerprint": source.fingerprint, "fingerprint": key,
                "content_fingerprint": content.hexdigest()[:16], "count": count,
                "resolution": resolution, "channels": channels, "crop": crop,
                "classes": source.classes, "skipped": len(skipped),
                "skipped_by_reason": dict(sorted(reasons.items())), "skipped_files": skipped}
        atomic_write(meta_path, json.dumps(meta, indent=1).encode())
    except OSError as e:
        raise DataError(f"cannot write the decode cache in {cache_dir}: {e.strerror}; "
                        f"{_write_advice(e, cache_dir)}") from None
    finally:
        tmp_raw.unlink(missing_ok=True)
        tmp_npy.unlink(missing_ok=True)
    try:
        loaded = _load(base, resolution, channels, source.classes)
    except Damaged as e:  # written a moment ago: the disk or another process changed it
        raise DataError(f"the decode cache just written in {cache_dir} reads back damaged "
                        f"({e}); check the disk, or set GANCTL_CACHE_DIR elsewhere") from None
    assert loaded is not None
    return loaded


# What to do when the cache cannot be written, by what the OS said: the advice fits the cause.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_IN_THE_WAY = frozenset({errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY})


def _write_advice(e: OSError, cache_dir: Path) -> str:
    elsewhere = "or set GANCTL_CACHE_DIR elsewhere"
    if e.errno in _FULL:
        return f"free space there, {elsewhere}"
    if e.errno in _NOT_WRITABLE:
        return f"make {cache_dir} writable, {elsewhere}"
    where = e.filename2 or e.filename or cache_dir  # os.replace names its target second
    if e.errno == errno.ENOTDIR:
        return f"a file stands where a folder of {where} should be: move it away, {elsewhere}"
    if e.errno in _IN_THE_WAY:
        return f"something is in the way at {where} (a folder or file where ganctl writes): " \
               f"move it away, {elsewhere}"
    return f"check the disk and free space there, {elsewhere}"


def _check_nothing_in_the_way(base: Path) -> None:
    """DataError if one of the cache's file names is taken by something that is no file (a
    folder, a FIFO): the build would fail at its very end, after decoding everything. A file
    there, damaged or not, is ganctl's own and is replaced."""
    for path in _files(base):
        try:
            mode = path.lstat().st_mode
        except (FileNotFoundError, NotADirectoryError):  # none yet (a cache dir that is a
            continue  # file is build()'s to report, when it makes the dir)
        except OSError as e:
            raise DataError(f"cannot look at {path}: {e.strerror}; check the cache dir's "
                            "permissions, or set GANCTL_CACHE_DIR elsewhere") from None
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            what = "a folder" if stat.S_ISDIR(mode) else "no regular file"
            raise DataError(f"{path} is {what}, in the way of the decode cache ganctl writes "
                            "there; move it away, or set GANCTL_CACHE_DIR elsewhere")


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _npy_from_raw(raw_path: Path, npy_path: Path, shape: tuple[int, ...]) -> None:
    """Prefix the raw uint8 bytes with an .npy header, copying in blocks, then fsync."""
    with open(npy_path, "wb") as out, open(raw_path, "rb") as raw:
        np.lib.format.write_array_header_1_0(
            out, {"descr": "|u1", "fortran_order": False, "shape": shape})
        while block := raw.read(64 << 20):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())


def _summary(reasons: Counter) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))


def load_or_build(source: Source, resolution: int, channels: int, crop: str,
                  cache_dir: Path | None = None,
                  progress_factory: Callable[[str, int], Progress] | None = None) -> Decoded:
    """The cached decode of `source` at these settings, building it on first use."""
    cache_dir = cache_dir or default_cache_dir()
    key = cache_key(source, resolution, channels, crop)
    base = cache_dir / _stem(source, key)
    task = one_line(f"decoding {source.name} into {cache_dir}")
    _check_nothing_in_the_way(base)
    try:
        found = _load(base, resolution, channels, source.classes)
    except Damaged as e:  # ganctl's own files: built again in their place, and said so
        found, task = None, f"{task} (its cache there was damaged: {e}; decoding it again)"
    if found is not None:
        return found
    progress = progress_factory(task, len(source)) if progress_factory is not None else None
    return build(source, resolution, channels, crop, cache_dir, progress)


def skip_summary(meta: dict[str, Any]) -> str | None:
    """One line on what was skipped, or None when nothing was."""
    if not meta.get("skipped"):
        return None
    total = meta["count"] + meta["skipped"]
    return one_line(f"skipped {meta['skipped']} of {total} files "
                    f"({_summary(Counter(meta['skipped_by_reason']))})")


# --- what the cache dir holds: `ganctl data cache list|clean` ---------------------------------------
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
MAX_META = 256 << 20  # a decode's .json lists its skipped files: large, but not this large
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

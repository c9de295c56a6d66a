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
import tokenize
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ganctl import fsutil
from ganctl.data.decode import Skip, decode, from_array
from ganctl.data.sources import Source
from ganctl.errors import DataError
from ganctl.fsutil import atomic_write
from ganctl.text import one_line

VERSION = 3  # bump when decoding (or the cache's files) change, so old caches are not reused
CHUNK = 256  # items decoded per task
MAX_META = 256 << 20  # a decode's .json lists its skipped files: large, but not this large
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
    skipped: list[dict[str, str]] = [{"file": f, "reason": r} for f, r in source.ignored]
    content = hashlib.sha256()  # of the pixels, then the labels: what the run trains on
    try:
        with open(tmp_raw, "wb") as raw:
            labels = _decode_into(raw, content, skipped, source, resolution, channels, crop,
                                  progress)
        count = len(labels)
        if count == 0:
            raise _nothing_usable(source, skipped)
        _npy_from_raw(tmp_raw, tmp_npy, (count, channels, resolution, resolution))
        meta_path, images_path, labels_path = _files(base)
        os.replace(tmp_npy, images_path)
        label_array = np.array(labels, dtype=np.int64)
        atomic_write(labels_path, _npy_bytes(label_array))
        content.update(label_array.tobytes())
        meta = {"version": VERSION, "name": source.name, "origin": source.origin,
                "source_fingerprint": source.fingerprint, "fingerprint": key,
                "content_fingerprint": content.hexdigest()[:16], "count": count,
                "resolution": resolution, "channels": channels, "crop": crop,
                "classes": source.classes, **_skip_report(skipped)}
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


def _decode_into(raw: BinaryIO, content: hashlib._Hash, skipped: list[dict[str, str]],
                 source: Source, resolution: int, channels: int, crop: str,
                 progress: Progress | None) -> list[int]:
    """Every item of `source` decoded, its (C, R, R) pixels written to `raw` one after another
    and hashed into `content`; returns the labels of the images written, and adds each item
    that could not be decoded to `skipped` (file, reason)."""
    labels: list[int] = []
    workers = max(1, min(16, os.cpu_count() or 1))
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
    return labels


def _nothing_usable(source: Source, skipped: list[dict[str, str]]) -> DataError:
    """The error for a source none of whose items decoded: how many were skipped, and why."""
    reasons = Counter(s["reason"] for s in skipped)
    return DataError(f"dataset {source.name!r} has no usable image in {source.origin}"
                     + (f" ({_summary(reasons)} skipped)" if reasons else "")
                     + "; it needs readable images (jpg, png, webp, bmp, gif, tiff): "
                       "replace the damaged ones or pass another dataset")


def _skip_report(skipped: list[dict[str, str]]) -> dict[str, Any]:
    """The cache's account of what was not decoded: how many, by reason, and which files."""
    reasons = Counter(s["reason"] for s in skipped)
    return {"skipped": len(skipped), "skipped_by_reason": dict(sorted(reasons.items())),
            "skipped_files": skipped}


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

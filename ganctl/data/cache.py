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

import hashlib
import io
import json
import os
import re
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ganctl.data.decode import Skip, decode, from_array
from ganctl.data.sources import Source
from ganctl.errors import DataError
from ganctl.fsutil import atomic_write

VERSION = 2  # bump when decoding (or the cache's files) change, so old caches are not reused
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


def _load(base: Path, resolution: int, channels: int) -> Decoded | None:
    """The cache at base, or None when it is absent, damaged or not what its name promises."""
    meta_path, images_path, labels_path = _files(base)
    if not (meta_path.is_file() and images_path.is_file() and labels_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(images_path, mmap_mode="r", allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False)
    except (OSError, ValueError, json.JSONDecodeError, UnicodeDecodeError):
        return None  # damaged: rebuild
    if not isinstance(meta, dict) or not isinstance(meta.get("content_fingerprint"), str) \
            or not isinstance(meta.get("classes"), list):
        return None
    if images.dtype != np.uint8 or images.shape[1:] != (channels, resolution, resolution) \
            or images.shape[0] != meta.get("count") or images.shape[0] == 0:
        return None
    if labels.dtype != np.int64 or labels.shape != (images.shape[0],):
        return None
    return Decoded(images, labels, [str(c) for c in meta["classes"]], meta["content_fingerprint"],
                   meta, images_path)


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
        raise DataError(f"cannot create the cache dir {cache_dir}: {e.strerror}; set "
                        "GANCTL_CACHE_DIR to a writable directory") from None
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
                            + (f" ({_summary(reasons)} skipped)" if reasons else ""))
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
        raise DataError(f"cannot write the decode cache in {cache_dir}: {e.strerror}; free "
                        "space or set GANCTL_CACHE_DIR elsewhere") from None
    finally:
        tmp_raw.unlink(missing_ok=True)
        tmp_npy.unlink(missing_ok=True)
    loaded = _load(base, resolution, channels)
    assert loaded is not None
    return loaded


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
    found = _load(cache_dir / _stem(source, key), resolution, channels)
    if found is not None:
        return found
    progress = None
    if progress_factory is not None:
        progress = progress_factory(f"decoding {source.name} into {cache_dir}", len(source))
    return build(source, resolution, channels, crop, cache_dir, progress)


def skip_summary(meta: dict[str, Any]) -> str | None:
    """One line on what was skipped, or None when nothing was."""
    if not meta.get("skipped"):
        return None
    total = meta["count"] + meta["skipped"]
    return (f"skipped {meta['skipped']} of {total} files "
            f"({_summary(Counter(meta['skipped_by_reason']))})")

"""Generate on this thread, encode and write on workers: the generator runs on the main thread
while worker threads encode and write each image file (or npz shard) whole or not at all, at
most PENDING_PER_WORKER jobs each waiting; and labels.csv once all are written.
"""

from __future__ import annotations

import csv
import io
import math
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ganctl.bulk.folder import LABELS
from ganctl.fsutil import atomic_file, atomic_write
from ganctl.imagefiles import QUALITY, image_bytes
from ganctl.models.base import num_classes
from ganctl.sample import LoadedGenerator, generate, seed_latents

_PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
PENDING_PER_WORKER = 4  # write jobs queued or running per worker thread: bounds memory


def produce(loaded: LoadedGenerator, units: list[list[int]], label_of: dict[int, int],
            path_of: dict[int, str], fmt: str, quality: int, truncation: float | None,
            batch_size: int, device: torch.device, progress: Callable[[int], None] | None,
            workers: int) -> int:
    """Generate each unit and hand it to the writers; returns the images written. On any
    exception (a signal's too) the writers stop at the next file and are waited for, so every
    file is whole or absent."""
    stop = threading.Event()
    pending: deque[tuple[Future, int]] = deque()
    written = 0
    files = _Tally()  # images the writers finished, counted file by file

    def settle(limit: int) -> None:
        nonlocal written
        while len(pending) > limit:
            future, n = pending.popleft()
            future.result()
            written += n
            if progress is not None:
                progress(n)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ganctl-export")
    try:
        for unit in units:
            images = _generate(loaded, unit, label_of, truncation, batch_size, device)
            for piece, x in _pieces(unit, images, 1 if fmt == "npz" else workers):
                settle(workers * PENDING_PER_WORKER - 1)
                job = (_write_shard if fmt == "npz" else _write_images)
                pending.append((pool.submit(job, piece, x, label_of, path_of, fmt, quality, stop,
                                            files), len(piece)))
        settle(0)
    finally:
        stop.set()  # a no-op when all is done; else the writers finish the file they are on
        pool.shutdown(wait=True, cancel_futures=True)
        if progress is not None and files.count > written:  # stopped: the files of unfinished jobs
            progress(files.count - written)
    return written


class _Tally:
    """A count that writer threads add to."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.count += n


def _generate(loaded: LoadedGenerator, seeds: list[int], label_of: dict[int, int],
              truncation: float | None, batch_size: int, device: torch.device) -> np.ndarray:
    """(n, H, W, C) uint8 images of the seeds."""
    z = seed_latents(loaded.G, seeds, loaded.config.z_dim, truncation, loaded.nvlabs_seeds)
    c = (torch.tensor([label_of[s] for s in seeds], dtype=torch.int64)
         if num_classes(loaded.config) else None)
    x = generate(loaded.G, z, device, c, batch_size, truncation)  # (N, C, H, W)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())  # (N, H, W, C)


def _pieces(seeds: list[int], images: np.ndarray, n: int) -> Iterator[tuple[list[int], np.ndarray]]:
    size = math.ceil(len(seeds) / n)
    for i in range(0, len(seeds), size):
        yield seeds[i:i + size], images[i:i + size]


def encode(image: np.ndarray, fmt: str, quality: int = QUALITY) -> bytes:
    """(H, W, C) uint8 -> the bytes of an image file, encoded as `ganctl sample` encodes its
    files (imagefiles.image_bytes: PNG byte for byte as a grid's cell would be)."""
    return image_bytes(torch.from_numpy(image), _PIL_FORMAT[fmt], quality)


def _write_images(seeds: list[int], images: np.ndarray, label_of: dict[int, int],
                  path_of: dict[int, str], fmt: str, quality: int, stop: threading.Event,
                  files: _Tally) -> None:
    for seed, image in zip(seeds, images, strict=True):
        if stop.is_set():
            return
        _put(Path(path_of[seed]), encode(image, fmt, quality))
        files.add(1)


def _write_shard(seeds: list[int], images: np.ndarray, label_of: dict[int, int],
                 path_of: dict[int, str], fmt: str, quality: int, stop: threading.Event,
                 files: _Tally) -> None:
    if stop.is_set():
        return
    buf = io.BytesIO()
    np.savez(buf, images=images, seeds=np.array(seeds, dtype=np.int64),
             labels=np.array([label_of[s] for s in seeds], dtype=np.int64))
    atomic_write(Path(path_of[seeds[0]]), buf.getbuffer())
    files.add(len(seeds))


def _put(path: Path, data: bytes) -> None:
    """An image file written whole or not at all, without an fsync per file (one fsync each
    made writing the slowest part on a GPU machine's disk: 1,500 img/s against a generator's
    16,000): export_images syncs them all once before its manifest says complete, and a rerun
    redoes any file a power cut left cut short (folder._whole)."""
    with atomic_file(path, sync_dir=False, sync=False) as f:
        f.write(data)


def write_labels(out_dir: Path, seeds: list[int], labels: list[int], names: list[str],
                 classes: Sequence[str]) -> None:
    buf = io.StringIO()
    rows = csv.writer(buf, lineterminator="\n")
    rows.writerow(["file", "seed", "class_index", "class_name"])
    for seed, k, name in zip(seeds, labels, names, strict=True):
        rows.writerow([name, seed, "" if k < 0 else k,
                       "" if k < 0 else classes[k]])
    atomic_write(out_dir / LABELS, buf.getvalue().encode())

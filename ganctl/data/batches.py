"""Random batches from a uint8 image array, reproducible and resumable.

The order is a pure function of (seed, epoch): each epoch is a fresh permutation (and, with
mirroring, a fresh set of horizontal flips) from a generator seeded with both, so the position
(epoch, index) is the whole sampler state and a resumed run draws exactly the batches the
uninterrupted run would have.

Where the array fits (in half the free memory of the device, or of the host for a CPU), it is
copied once to the device and batches are gathered, flipped and scaled there with no per-step
host work ("resident"). Otherwise a background thread gathers each batch from the memory-mapped
array (into pinned memory, for a GPU) and copies it asynchronously ("streamed").

Each batch is a Batch(x, c): the images and, for labelled data, their class indices.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

_EPOCH_STRIDE = 1_000_003  # a prime: (seed, epoch) -> distinct generator seeds
RESIDENT_FRACTION = 0.5  # of the device's free memory (or the host's available RAM)
PREFETCH = 4  # batches a streaming loader keeps ready


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor  # (B, C, H, W) float in [-1, 1], on the device
    c: torch.Tensor | None = None  # (B,) int64 class indices (-1: none), None for unlabelled data


def fits_on(device: torch.device, nbytes: int) -> bool:
    return nbytes <= RESIDENT_FRACTION * _free_bytes(device)


class Batches:
    def __init__(self, images: np.ndarray | torch.Tensor, batch_size: int, seed: int,
                 device: torch.device, mirror: bool = False, resident: bool | None = None,
                 labels: np.ndarray | torch.Tensor | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 rank: int = 0, world: int = 1) -> None:
        """labels: (N,) class indices of the images, or None for unlabelled data; memory_format:
        the batches' layout (the networks', channels_last on CUDA and CPU). With `world`
        processes, batch_size is the global batch: the position advances by it, and this
        `rank` takes its share, rows rank * b ... (rank + 1) * b of each (b = batch_size /
        world), so the ranks' batches are disjoint and together the one-process batch."""
        self.memory_format = memory_format
        self.count = len(images)
        if labels is not None and len(labels) != self.count:
            raise ValueError(f"{len(labels)} labels for {self.count} images")
        self.batch_size = batch_size
        self.local = batch_size // world  # this rank's rows of each batch
        self.offset = rank * self.local
        self.seed = seed
        self.device = device
        self.mirror = mirror
        self.resident = fits_on(device, images.nbytes) if resident is None else resident
        if self.resident:
            tensor = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))
            self.images: np.ndarray | torch.Tensor = tensor.to(device)  # (N, C, H, W) uint8
        else:
            self.images = images.numpy() if isinstance(images, torch.Tensor) else images
        host_labels = None if labels is None else torch.as_tensor(labels, dtype=torch.int64)
        # resident: on the device beside the images; streamed: gathered with each batch
        self.labels = host_labels if host_labels is None or not self.resident else host_labels.to(device)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH)
        self.load_state(0, 0)

    # --- order ------------------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * _EPOCH_STRIDE + epoch)
        perm = torch.randperm(self.count, generator=g)
        flips = torch.rand(self.count, generator=g) < 0.5 if self.mirror else torch.zeros(
            self.count, dtype=torch.bool)
        return perm, flips

    def state(self) -> tuple[int, int]:
        return self.epoch, self.index

    def load_state(self, epoch: int, index: int) -> None:
        self.close()
        self.epoch, self.index = epoch, index
        if self.resident:
            self._set_epoch(epoch)
        else:
            self._start_loader(epoch, index)

    def _set_epoch(self, epoch: int) -> None:
        perm, flips = self._epoch_order(epoch)
        self._perm, self._flips = perm.to(self.device), flips.to(self.device)

    def _advance(self) -> tuple[int, int, int]:
        """(epoch, start, stop) of the next batch; the last partial batch of an epoch is dropped."""
        if self.index + self.batch_size > self.count:
            self.epoch, self.index = self.epoch + 1, 0
            if self.resident:
                self._set_epoch(self.epoch)
        start = self.index
        self.index += self.batch_size
        return self.epoch, start, self.index

    # --- batches ------------------------------------------------------------------------------------
    def latents(self, generator: torch.Generator, z_dim: int) -> torch.Tensor:
        """This process's rows of a fresh global batch of latents (B, z_dim) from `generator`:
        every rank draws the whole batch (the same, from the same generator), and takes the rows
        of its share of the real batch."""
        z = torch.randn(self.batch_size, z_dim, generator=generator, device=self.device)
        return z[self.offset:self.offset + self.local]

    def next(self) -> Batch:
        """The next batch: images as float in [-1, 1], (B, C, H, W), and labels, on the device."""
        _, start, _ = self._advance()
        if self.resident:
            idx = self._perm[start + self.offset:start + self.offset + self.local]
            x = self.images.index_select(0, idx)  # type: ignore[union-attr]
            flip = self._flips[idx]
            c = None if self.labels is None else self.labels.index_select(0, idx)
        else:
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._queue.put(item)  # the loader has stopped: every later call fails the same way
                raise item
            x, flip, c = item
        return Batch(self._scale(x, flip), c)

    def _scale(self, x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """uint8 -> float in [-1, 1], flipped where asked."""
        x = x.to(torch.float32, memory_format=self.memory_format).div_(127.5).sub_(1.0)
        if self.mirror:
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def _start_loader(self, epoch: int, index: int) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=PREFETCH)
        self._thread = threading.Thread(target=self._load, args=(epoch, index, self._stop,
                                                                 self._queue), daemon=True)
        self._thread.start()

    def _load(self, epoch: int, index: int, stop: threading.Event, out: queue.Queue) -> None:
        pin = self.device.type == "cuda"
        try:
            perm, flips = self._epoch_order(epoch)
            while not stop.is_set():
                if index + self.batch_size > self.count:
                    epoch, index = epoch + 1, 0
                    perm, flips = self._epoch_order(epoch)
                first = index + self.offset
                idx = perm[first:first + self.local]
                index += self.batch_size
                x = torch.from_numpy(np.ascontiguousarray(self.images[idx.numpy()]))
                c = None if self.labels is None else self.labels.index_select(0, idx)
                if pin:
                    x, c = x.pin_memory(), None if c is None else c.pin_memory()
                self._put(out, (x.to(self.device, non_blocking=True), flips[idx].to(self.device),
                                None if c is None else c.to(self.device, non_blocking=True)), stop)
        except BaseException as e:  # surfaces in next()
            self._put(out, e, stop)

    @staticmethod
    def _put(out: queue.Queue, item: object, stop: threading.Event) -> None:
        while not stop.is_set():  # never block past close()
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

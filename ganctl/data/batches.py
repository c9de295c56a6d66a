"""Random batches from an in-memory uint8 image array, reproducible and resumable.

The order is a pure function of (seed, epoch): each epoch is a fresh permutation from a
generator seeded with both, so the position (epoch, index) is the whole sampler state and
a resumed run draws exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import torch

_EPOCH_STRIDE = 1_000_003  # a prime: (seed, epoch) -> distinct generator seeds


class Batches:
    def __init__(self, images: torch.Tensor, batch_size: int, seed: int,
                 device: torch.device) -> None:
        self.images = images.to(device)  # (N, C, H, W) uint8, resident on the device
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.index = 0  # position within the current epoch's permutation
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * _EPOCH_STRIDE + epoch)
        return torch.randperm(len(self.images), generator=g).to(self.images.device)

    def state(self) -> tuple[int, int]:
        return self.epoch, self.index

    def load_state(self, epoch: int, index: int) -> None:
        self.epoch, self.index = epoch, index
        self._perm = self._permutation(epoch)

    def next(self) -> torch.Tensor:
        """The next batch as float in [-1, 1], (B, C, H, W); the last partial batch is dropped."""
        if self.index + self.batch_size > len(self.images):
            self.load_state(self.epoch + 1, 0)
        idx = self._perm[self.index:self.index + self.batch_size]
        self.index += self.batch_size
        return self.images[idx].float().div_(127.5).sub_(1.0)

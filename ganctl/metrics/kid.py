"""Kernel Inception Distance (Binkowski et al. 2018): the unbiased estimate of the squared MMD
with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ganctl.metrics.protocol import SUBSET_SIZE, SUBSETS
from ganctl.metrics.stats import float64_device


@dataclass(frozen=True)
class KID:
    mean: float
    std: float
    subsets: int
    subset_size: int  # smaller than SUBSET_SIZE when fewer images were given


def _kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased squared MMD between samples x (m, d) and y (n, d), in float64: the diagonal
    terms k(x_i, x_i) are left out of the within-sample means."""
    x, y = x.double(), y.double()
    m, n = len(x), len(y)
    kxx, kyy, kxy = _kernel(x, x), _kernel(y, y), _kernel(x, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * kxy.mean())


def kernel_inception_distance(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor,
                              subsets: int = SUBSETS, subset_size: int = SUBSET_SIZE, seed: int = 0,
                              device: torch.device | str = "cpu") -> KID:
    """KID over `subsets` pairs of random subsets (without replacement) of `subset_size` images,
    or of as many as the smaller set has. Deterministic for a given seed."""
    device = float64_device(torch.device(device))
    real_t = torch.as_tensor(real).to(device, torch.float64)
    fake_t = torch.as_tensor(fake).to(device, torch.float64)
    size = min(subset_size, len(real_t), len(fake_t))
    if size < 2:
        raise ValueError(f"KID needs at least 2 images of each kind, got {len(real_t)} and {len(fake_t)}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        f = torch.from_numpy(rng.choice(len(fake_t), size, replace=False)).to(real_t.device)
        r = torch.from_numpy(rng.choice(len(real_t), size, replace=False)).to(real_t.device)
        values.append(mmd2_unbiased(fake_t[f], real_t[r]))
    return KID(float(np.mean(values)), _std(np.array(values)), subsets, size)


def _std(values: np.ndarray) -> float:
    """np.std, scaled first by the largest magnitude: the squares of the MMD^2 of large features
    (1e25 and up: the kernel is cubic) overflow float64, while their spread is a finite number."""
    scale = float(np.abs(values).max(initial=0.0))
    return scale * float(np.std(values / scale)) if scale > 0 else 0.0

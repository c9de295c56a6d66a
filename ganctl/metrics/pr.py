"""Improved precision and recall (Kynkaanniemi et al. 2019) on feature vectors.

Each set is a manifold: the union of balls around its points, each reaching to the point's
k-th nearest neighbour in the same set. Precision is the fraction of fakes inside the real
manifold, recall the fraction of reals inside the fake manifold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ganctl.metrics.protocol import K

MAX_IMAGES = 10_000
ROWS = 1024  # rows of the distance matrix computed at once
EXPONENT_LIMIT = 126  # 2**126 and 2**-126 are normal float32 numbers: a scale by them is exact


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float
    k: int


def _kth_radius(points: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point: (N,)."""
    out = []
    for rows in points.split(ROWS):
        dist = torch.cdist(rows, points)  # (r, N), the point itself at distance 0
        out.append(dist.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _inside(probes: torch.Tensor, points: torch.Tensor, radii: torch.Tensor) -> float:
    """Fraction of probes within radius of at least one point."""
    hits = []
    for rows in probes.split(ROWS):
        hits.append((torch.cdist(rows, points) <= radii[None]).any(dim=1))
    return float(torch.cat(hits).float().mean())


def _unit_scale(*sets: torch.Tensor) -> list[torch.Tensor]:
    """The float32 sets times one power of two that brings their largest magnitude to about 1: exact,
    so every distance comparison is unchanged, and the float32 distances of large features (1e20:
    their squares overflow to inf, and differences of those to NaN) or of tiny ones (1e-25: their
    squares underflow to 0) are representable."""
    biggest = max(float(s.abs().max()) for s in sets)
    if biggest == 0 or not math.isfinite(biggest):
        return list(sets)
    exponent = min(max(math.frexp(biggest)[1], -EXPONENT_LIMIT), EXPONENT_LIMIT)
    return [s * 2.0**-exponent for s in sets]


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = K) -> PrecisionRecall:
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images of each kind")
    real, fake = _unit_scale(real.float(), fake.float())
    precision = _inside(fake, real, _kth_radius(real, k))
    recall = _inside(real, fake, _kth_radius(fake, k))
    return PrecisionRecall(precision, recall, k)

"""Improved precision and recall (Kynkaanniemi et al. 2019) on feature vectors.

Each set is a manifold: the union of balls around its points, each reaching to the point's
k-th nearest neighbour in the same set. Precision is the fraction of fakes inside the real
manifold, recall the fraction of reals inside the fake manifold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

K = 3
MAX_IMAGES = 10_000
ROWS = 1024  # rows of the distance matrix computed at once


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


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = K) -> PrecisionRecall:
    real, fake = real.float(), fake.float()
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images of each kind")
    precision = _inside(fake, real, _kth_radius(real, k))
    recall = _inside(real, fake, _kth_radius(fake, k))
    return PrecisionRecall(precision, recall, k)

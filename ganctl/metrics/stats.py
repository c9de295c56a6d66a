"""What a set of images leaves for the metrics: its count, the mean and covariance of its
features (float64, for FID), and the features of up to KEEP of them (for KID and
precision/recall). Real-data statistics are cached, atomically, beside the decode cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from ganctl.fsutil import atomic_write

KEEP = 10_000  # features kept for KID subsets and precision/recall
PROTOCOL_VERSION = 1  # bump when anything that changes a score changes


@dataclass(frozen=True)
class FeatureStats:
    count: int
    mean: np.ndarray  # (d,) float64
    cov: np.ndarray  # (d, d) float64, unbiased (divided by count - 1)
    kept: np.ndarray  # (min(count, KEEP), d) float32: the first images' features


class Accumulator:
    """Sums features batch by batch on their device, in float64."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self.count = 0
        self.total: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None
        self.kept: list[torch.Tensor] = []
        self._kept_rows = 0

    def add(self, features: torch.Tensor) -> None:
        """features: (B, d) float32."""
        x = features.double()
        if self.total is None or self.outer is None:
            self.total, self.outer = x.sum(0), x.T @ x
        else:
            self.total += x.sum(0)
            self.outer += x.T @ x
        if self._kept_rows < self.keep:
            take = features[: self.keep - self._kept_rows].float().cpu()
            self.kept.append(take)
            self._kept_rows += len(take)
        self.count += len(features)

    def result(self) -> FeatureStats:
        if self.count < 2 or self.total is None or self.outer is None:
            raise ValueError(f"feature statistics need at least 2 images, got {self.count}")
        n = self.count
        mean = (self.total / n).cpu().numpy()
        outer = self.outer.cpu().numpy()
        cov = (outer - n * np.outer(mean, mean)) / (n - 1)
        return FeatureStats(n, mean, (cov + cov.T) / 2, torch.cat(self.kept).numpy())


def stats_key(**parts: object) -> str:
    """A short hash of what real statistics depend on."""
    raw = json.dumps({"protocol": PROTOCOL_VERSION, **parts}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def save_stats(path: Path, stats: FeatureStats, meta: dict[str, object]) -> None:
    tensors = {"mean": torch.from_numpy(stats.mean), "cov": torch.from_numpy(stats.cov),
               "kept": torch.from_numpy(np.ascontiguousarray(stats.kept))}
    metadata = {"ganctl.stats": json.dumps({**meta, "count": stats.count})}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, safetensors_bytes(tensors, metadata=metadata))


def load_stats(path: Path) -> FeatureStats | None:
    """Cached statistics, or None when absent or unreadable (they are then computed again)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["ganctl.stats"])
            mean, cov, kept = (f.get_tensor(k).numpy() for k in ("mean", "cov", "kept"))
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError):
        return None
    count = meta.get("count")
    d = mean.shape[0] if mean.ndim == 1 else -1
    if not isinstance(count, int) or cov.shape != (d, d) or kept.ndim != 2 or kept.shape[1] != d:
        return None
    return FeatureStats(count, mean.astype(np.float64), cov.astype(np.float64),
                        kept.astype(np.float32))

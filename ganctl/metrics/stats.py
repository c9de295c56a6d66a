"""What a set of images leaves for the metrics: its count, the mean and covariance of its
features (float64, for FID), and the features of up to KEEP of them (for KID and
precision/recall). Real-data statistics are cached, atomically, beside the decode cache; a
cached file is checked whole before it is trusted (DamagedStats says why it is not).
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

from ganctl.errors import first_line
from ganctl.fsutil import atomic_write
from ganctl.metrics.protocol import KEEP, MIN_COUNT, PROTOCOL_VERSION

META_KEY = "ganctl.stats"  # the cached file's metadata: JSON, the count and what the stats depend on
TENSORS = ("mean", "cov", "kept")
MEAN_TOLERANCE = 1e-6  # between a cached mean and the mean of the kept features, when all are kept
# of a cached covariance's entry (i, j), relative to sqrt(m_i m_j), the root of the features' raw
# second moments m = variance + mean^2 that the rounding of sum(x x^T) - n mean mean^T scales with
COV_TOLERANCE = 1e-6
FEATURE_LIMIT = float(np.finfo(np.float32).max)  # features are float32: none is larger than this
# the largest unbiased variance of values within +-FEATURE_LIMIT is n / (n - 1) FEATURE_LIMIT^2, at most
# twice its square: twice that again leaves room for rounding, and FID's products of such stay finite
VARIANCE_LIMIT = 4 * FEATURE_LIMIT**2


@dataclass(frozen=True)
class FeatureStats:
    count: int
    mean: np.ndarray  # (d,) float64
    cov: np.ndarray  # (d, d) float64, unbiased (divided by count - 1)
    kept: np.ndarray  # (min(count, KEEP), d) float32: the first images' features


def float64_device(device: torch.device) -> torch.device:
    """Where float64 arithmetic on `device`'s tensors can run: there, except Apple's mps, which
    has no float64 (the CPU then)."""
    return torch.device("cpu") if device.type == "mps" else device


class Accumulator:
    """Sums features batch by batch on their device (the CPU for mps), in float64."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self.count = 0
        self.total: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None
        self.kept: list[torch.Tensor] = []
        self._kept_rows = 0
        self._nonfinite: torch.Tensor | None = None  # rows with a NaN or inf, counted on the device

    def add(self, features: torch.Tensor) -> None:
        """features: (B, d) float32. Rows with a NaN or inf are counted (nonfinite) without
        waiting for the device; the sums they spoil are refused by result()."""
        x = features.to(float64_device(features.device), torch.float64)
        bad = (~torch.isfinite(x)).any(dim=1).sum()
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite + bad
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

    @property
    def nonfinite(self) -> int:
        """How many of the images added so far gave a NaN or inf feature (waits for the device)."""
        return 0 if self._nonfinite is None else int(self._nonfinite)

    def result(self) -> FeatureStats:
        if self.count < MIN_COUNT or self.total is None or self.outer is None:
            raise ValueError(f"feature statistics need at least {MIN_COUNT} images, got {self.count}")
        if self.nonfinite or not bool(torch.isfinite(self.total).all() & torch.isfinite(self.outer).all()):
            raise ValueError(f"{self.nonfinite} of {self.count} images gave non-finite features")
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
    metadata = {META_KEY: json.dumps({**meta, "count": stats.count})}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, safetensors_bytes(tensors, metadata=metadata))


class DamagedStats(Exception):
    """A cached statistics file that cannot be trusted; the message says why (for the log line
    that announces computing them again)."""


def load_stats(path: Path, count: int | None = None, features: int | None = None,
               expect: dict[str, object] | None = None) -> FeatureStats | None:
    """Cached statistics; None when there are none. A file that is unreadable, incomplete or
    inconsistent (with itself, or with the `count` of images, the `features` per image and the
    metadata values in `expect` that the caller wants) raises DamagedStats: such a file is
    computed again, never trusted and never a crash."""
    if not path.exists():
        return None
    if not path.is_file():
        raise DamagedStats("not a regular file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            missing = [k for k in TENSORS if k not in set(f.keys())]
            tensors = {k: f.get_tensor(k) for k in TENSORS if k not in missing}
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as e:
        raise DamagedStats(f"not a readable safetensors file: {first_line(e, 120)}") from None
    if missing:
        raise DamagedStats(f"no {', '.join(missing)} tensor")
    meta = _metadata(raw)
    n = _count(meta, count)
    for key, value in (expect or {}).items():
        if meta.get(key) != value:
            raise DamagedStats(f"its {key} is {meta.get(key)!r}, not {value!r}")
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise DamagedStats(f"its {name} is {str(t.dtype).removeprefix('torch.')}, not floating point")
    mean, cov = tensors["mean"].double().numpy(), tensors["cov"].double().numpy()
    kept = tensors["kept"].float().numpy()
    _check_arrays(mean, cov, kept, n, features)
    stats = FeatureStats(n, mean, cov, kept)
    _check_consistent(stats)
    return stats


def _metadata(raw: str | None) -> dict:
    """The file's ganctl.stats metadata: a JSON object."""
    if raw is None:
        raise DamagedStats(f"no {META_KEY} metadata")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: arrays or objects nested thousands deep
        raise DamagedStats(f"its {META_KEY} metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise DamagedStats(f"its {META_KEY} metadata is a JSON {type(meta).__name__}, not an object")
    return meta


def _count(meta: dict, count: int | None) -> int:
    """The number of images the statistics are of: a whole number, at least MIN_COUNT, and the
    `count` asked for when one is."""
    n = meta.get("count")
    if isinstance(n, bool) or not isinstance(n, int) or n < MIN_COUNT:
        raise DamagedStats(f"its count is {n!r}, not a whole number of at least {MIN_COUNT} images")
    if count is not None and n != count:
        raise DamagedStats(f"they are of {n} images, not {count}")
    return n


def _check_arrays(mean: np.ndarray, cov: np.ndarray, kept: np.ndarray, count: int,
                  features: int | None) -> None:
    """Shapes (d,), (d, d) and (min(count, KEEP), d), and finite values."""
    d = mean.shape[0] if mean.ndim == 1 else -1
    if d < 1 or (features is not None and d != features):
        raise DamagedStats(f"its mean has shape {mean.shape}, not ({features or 'd'},)")
    for name, array, shape in (("cov", cov, (d, d)), ("kept", kept, (min(count, KEEP), d))):
        if array.shape != shape:
            raise DamagedStats(f"its {name} has shape {array.shape}, not {shape}")
    for name, array in (("mean", mean), ("cov", cov), ("kept", kept)):
        if not np.isfinite(array).all():
            raise DamagedStats(f"its {name} has NaN or inf values")


def _check_consistent(stats: FeatureStats) -> None:
    """What the numbers must satisfy together, cheaply (no d x d product): magnitudes that float32
    features can give, a symmetric covariance with no negative variance and no covariance larger
    than its variances allow (Cauchy-Schwarz), variances no smaller than the kept features' share
    of them and, when every image's features are kept, their mean and their variances. A damaged
    file within these bounds still scores finitely; outside them, FID or KID would overflow."""
    mean, cov, n = stats.mean, stats.cov, stats.count
    if (np.abs(mean) > FEATURE_LIMIT).any():
        raise DamagedStats(f"its mean has values beyond what float32 features can give "
                           f"({FEATURE_LIMIT:.3g})")
    variance = np.diag(cov)
    if (np.abs(variance) > VARIANCE_LIMIT).any():
        raise DamagedStats(f"its cov has variances beyond what float32 features can give "
                           f"({VARIANCE_LIMIT:.3g})")
    moment = np.abs(variance) + mean**2 * (n / (n - 1))  # what the rounding of each variance scales with
    root = np.sqrt(moment)
    slack = COV_TOLERANCE * np.outer(root, root)
    with np.errstate(over="ignore"):  # entries near the float64 limit: their difference is inf, refused
        asymmetry = np.abs(cov - cov.T)
    if (asymmetry > slack).any():
        raise DamagedStats("its cov is not symmetric")
    if (variance < -COV_TOLERANCE * moment).any():
        raise DamagedStats("its cov has negative variances")
    deviation = np.sqrt(np.clip(variance, 0, None))
    if (np.abs(cov) > np.outer(deviation, deviation) + slack).any():
        raise DamagedStats("its cov has covariances larger than its variances allow")
    every = n == len(stats.kept)
    if every:
        centre = stats.kept.mean(0, dtype=np.float64)
        if not np.allclose(mean, centre, rtol=0, atol=MEAN_TOLERANCE * (float(np.abs(centre).max()) + 1.0)):
            raise DamagedStats("its mean is not the mean of its kept features")
    share = _squared_deviations(stats.kept, mean) / (n - 1)  # the kept images' part of each variance
    rounding = COV_TOLERANCE * (moment + share)
    if (share > variance + rounding).any():
        raise DamagedStats("its cov has variances smaller than its kept features' own")
    if every and (variance > share + rounding).any():
        raise DamagedStats("its cov's variances are not those of its kept features")


def _squared_deviations(kept: np.ndarray, mean: np.ndarray, rows: int = 1024) -> np.ndarray:
    """sum_k (kept_k - mean)^2 per feature, in float64, a block of rows at a time (all the kept
    features in float64 at once would be 160 MB)."""
    total = np.zeros(kept.shape[1])
    for start in range(0, len(kept), rows):
        total += ((kept[start:start + rows].astype(np.float64) - mean) ** 2).sum(0)
    return total

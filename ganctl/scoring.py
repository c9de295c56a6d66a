"""Scoring generators: real statistics (computed once per dataset and protocol, then cached),
fakes from fixed seeds, the metrics of ganctl.metrics. Used by `ganctl eval`, by training
(--eval-every) and by benchmarks/quality.py.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ganctl import distributed, rundir
from ganctl.checkpoint import Header
from ganctl.config import Config
from ganctl.data import ImageSet, load_dataset
from ganctl.data.cache import default_cache_dir
from ganctl.errors import ConfigError
from ganctl.logging import RunLog
from ganctl.metrics import PROTOCOL, Scores, compute, inception
from ganctl.metrics.stats import Accumulator, FeatureStats, load_stats, save_stats, stats_key
from ganctl.sample import labels_for_seeds, latents_from_seeds, load_generator, to_uint8

REAL_ORDER_SEED = 0  # the fixed random order in which real images are taken
Progress = Callable[[str, int], Callable[[int], None]]


def batch_size_for(device: torch.device) -> int:
    return 200 if device.type == "cuda" else 25


@dataclass
class EvalResult:
    scores: Scores
    num_real: int
    num_fake: int
    seconds: float
    real_stats: str  # "cache <path>" or "computed <path>"
    feature_net: dict[str, Any]
    protocol: dict[str, Any] = field(default_factory=lambda: dict(PROTOCOL))

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.scores, "num_real": self.num_real, "num_fake": self.num_fake,
                "seconds": self.seconds, "real_stats": self.real_stats,
                "feature_net": self.feature_net, "protocol": self.protocol}

    def record(self, step: int, **extra: Any) -> dict[str, Any]:
        """The metrics.jsonl line of this evaluation (strict JSON: a non-finite score as text)."""
        scores = {k: v if not isinstance(v, float) or math.isfinite(v) else str(v)
                  for k, v in self.scores.items()}
        return {"step": step, "event": "eval", "time": round(time.time(), 3), **scores,
                "num_real": self.num_real, "num_fake": self.num_fake, "seconds": self.seconds,
                "inception_sha256": self.feature_net["sha256"], **extra}

    def summary(self) -> str:
        parts = [f"{k.upper() if k in ('fid', 'kid') else k} {v:.4g}" for k, v in self.scores.items()
                 if k in ("fid", "kid", "precision", "recall")]
        return (f"{'  '.join(parts)} ({self.num_fake} fakes vs {self.num_real} reals, "
                f"{self.seconds:.0f} s)")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", Path(text).name).strip("_") or "data"


def extract(net: inception.FeatureNet, batches: Any, total: int, description: str,
            progress: Progress | None) -> FeatureStats:
    """Feature statistics of the uint8 image batches (an iterable of (B, C, H, W) tensors)."""
    return _accumulate(net, batches, total, description, progress).result()


def _accumulate(net: inception.FeatureNet, batches: Any, total: int, description: str,
                progress: Progress | None) -> Accumulator:
    advance = progress(description, total) if progress else None
    acc = Accumulator()
    for images in batches:
        acc.add(net(images))
        if advance:
            advance(len(images))
    return acc


def real_batches(images: np.ndarray | torch.Tensor, count: int, batch: int):
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(REAL_ORDER_SEED))
    for chunk in order[:count].split(batch):
        idx = chunk.numpy()
        yield torch.as_tensor(np.asarray(images[idx]))  # (B, C, H, W) uint8, in the fixed order


def fake_batches(G: nn.Module, config: Config, count: int, batch: int, device: torch.device,
                 first: int = 0):
    """G's images for seeds first..count-1 (a conditional model's classes in turn), as uint8."""
    for start in range(first, count, batch):
        seeds = range(start, min(start + batch, count))
        z = latents_from_seeds(seeds, config.z_dim).to(device)
        c = labels_for_seeds(seeds, config)
        with torch.no_grad():
            yield to_uint8(G(z, None if c is None else c.to(device)))  # as a user would save them


class Evaluator:
    """Scores generators against one dataset's real statistics with one feature network."""

    def __init__(self, net: inception.FeatureNet, real: FeatureStats, real_stats: str,
                 metrics: list[str], num_fake: int, log: RunLog | None = None) -> None:
        self.net, self.real, self.real_stats = net, real, real_stats
        self.metrics, self.num_fake = metrics, num_fake
        self.progress = log.task if log is not None else None

    def __call__(self, G: nn.Module, config: Config) -> EvalResult:
        t0 = time.perf_counter()
        was_training = G.training
        G.eval()
        first, stop = distributed.share(self.num_fake)  # this process's seeds: all, alone
        try:
            batch = batch_size_for(self.net.device)
            acc = _accumulate(self.net, fake_batches(G, config, stop, batch, self.net.device, first),
                              stop - first, "features of the fakes", self.progress)
        finally:
            G.train(was_training)
        merged = distributed.merge_features(acc)  # every process's fakes, on rank 0
        if merged is None:  # another rank: rank 0 scores them once
            return EvalResult({}, self.real.count, self.num_fake, round(time.perf_counter() - t0, 2),
                              self.real_stats, self.net.describe())
        fake = merged.result()
        scores = compute(self.metrics, self.real, fake, self.net.device)
        return EvalResult(scores, self.real.count, fake.count, round(time.perf_counter() - t0, 2),
                          self.real_stats, self.net.describe())


def make_evaluator(config: Config, data: ImageSet, device: torch.device, metrics: list[str],
                   num_fake: int, num_real: int | None, inception_path: str | None,
                   download: bool, log: RunLog, progress: bool = True) -> Evaluator:
    """The feature network and the real statistics (from the cache, or computed and cached).
    progress=False: the evaluator shows no progress bar (training shows its own)."""
    if num_fake < 2:
        raise ConfigError(f"--num must be at least 2 fake images, got {num_fake}")
    count = len(data.images) if not num_real else min(num_real, len(data.images))
    if count < 2:
        raise ConfigError(f"scoring needs at least 2 real images; the dataset has {len(data.images)}")
    net = inception.load(inception.locate(inception_path, download, log.task), device)
    key = stats_key(dataset=data.fingerprint, resolution=config.resolution, channels=config.channels,
                    crop=config.crop, feature_net=net.sha256, num_real=count)
    path = default_cache_dir() / f"{_slug(config.dataset)}-{key}.stats.safetensors"
    real = load_stats(path)
    if real is not None:
        log.info(f"real statistics of {count} images from the cache: {path}")
        return Evaluator(net, real, f"cache {path}", metrics, num_fake, log if progress else None)
    real = extract(net, real_batches(data.images, count, batch_size_for(device)), count,
                   f"features of {count} real images of {config.dataset}", log.task)
    save_stats(path, real, {"dataset": config.dataset, "fingerprint": data.fingerprint,
                            "resolution": config.resolution, "channels": config.channels,
                            "crop": config.crop, "feature_net_sha256": net.sha256})
    log.info(f"real statistics cached in {path}")
    return Evaluator(net, real, f"computed {path}", metrics, num_fake, log if progress else None)


def evaluate_checkpoint(header: Header, device: torch.device, metrics: list[str], num_fake: int,
                        num_real: int | None, overrides: dict[str, Any], inception_path: str | None,
                        download: bool, log: RunLog) -> dict[str, Any]:
    """`ganctl eval`: a checkpoint's G_ema against its training data (or `overrides`' dataset);
    the result is appended to the run's metrics.jsonl as an "eval" event."""
    loaded = load_generator(header, device)
    config = loaded.config.replace(**overrides, batch_size=1)
    data = load_dataset(config, download=download, progress=log.task)
    evaluator = make_evaluator(config, data, device, metrics, num_fake, num_real, inception_path,
                               download, log)
    result = evaluator(loaded.G, loaded.config)
    doc = {"checkpoint": str(header.path), "step": header.step, "dataset": config.dataset,
           "split": config.split or None, **result.to_dict()}
    if header.path.parent.name == rundir.CKPT_DIR and rundir.is_run_dir(header.path.parent.parent):
        log.attach(header.path.parent.parent / rundir.METRICS)
        log.event(result.record(header.step, checkpoint=header.path.name, dataset=config.dataset),
                  f"eval of {header.path.name}: {result.summary()}")
    return doc

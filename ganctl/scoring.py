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
from ganctl.errors import CheckpointError, ConfigError, FeatureNetError
from ganctl.metrics import Scores, inception, least_images, protocol_doc, summary
from ganctl.metrics.scores import compute, compute_generated, features_of
from ganctl.metrics.stats import Accumulator, DamagedStats, FeatureStats, load_stats, save_stats, stats_key
from ganctl.output.progress import RunLog
from ganctl.sample import labels_for_seeds, latents_from_seeds, load_generator, to_uint8

REAL_ORDER_SEED = 0  # the fixed random order in which real images are taken
GENERATOR = "the generator (G_ema)"  # what made the fakes, in messages, unless told better
Progress = Callable[[str, int], Callable[[int], None]]


def batch_size_for(device: torch.device) -> int:
    return 200 if device.type == "cuda" else 25


def strict_json(scores: Scores) -> dict[str, Any]:
    """Scores that every JSON reader reads: a non-finite one (which compute() refuses, but a
    score from elsewhere may be) as the text 'inf' or 'nan', never the bare Infinity or NaN
    tokens that Python's json writes and strict parsers reject."""
    return {k: v if not isinstance(v, float) or math.isfinite(v) else str(v) for k, v in scores.items()}


@dataclass
class EvalResult:
    scores: Scores
    num_real: int
    num_fake: int
    seconds: float
    real_stats: str  # "cache <path>" or "computed <path>"
    feature_net: dict[str, Any]
    protocol: dict[str, Any] = field(default_factory=protocol_doc)

    def to_dict(self) -> dict[str, Any]:
        """`ganctl eval --json`'s document: strict JSON, as the record is."""
        return {"metrics": strict_json(self.scores), "num_real": self.num_real, "num_fake": self.num_fake,
                "seconds": self.seconds, "real_stats": self.real_stats,
                "feature_net": self.feature_net, "protocol": self.protocol}

    def record(self, step: int, **extra: Any) -> dict[str, Any]:
        """The metrics.jsonl line of this evaluation (strict JSON: a non-finite score as text)."""
        return {"step": step, "event": "eval", "time": round(time.time(), 3), **strict_json(self.scores),
                "num_real": self.num_real, "num_fake": self.num_fake, "seconds": self.seconds,
                "inception_sha256": self.feature_net["sha256"], **extra}

    def summary(self) -> str:
        return (f"{summary(self.scores)} ({self.num_fake} fakes vs {self.num_real} reals, "
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
        if acc.count == len(images):  # the first batch: a broken network fails now, not in minutes
            _require_finite_features(acc, net, description)
        if advance:
            advance(len(images))
    _require_finite_features(acc, net, description)
    return acc


def _require_finite_features(acc: Accumulator, net: inception.FeatureNet, description: str) -> None:
    """uint8 images are always finite, so NaN or inf features come from the feature network
    (or from images it cannot read): say how many, never let numpy fail on them later."""
    bad = acc.nonfinite
    if bad:
        raise FeatureNetError(f"the feature network {net.path} gave NaN or inf features for {bad} "
                              f"of {acc.count} images while computing the {description}; the feature "
                              f"network file or the images are broken: use NVlabs' "
                              f"{inception.FILE_NAME} ({inception.URL})")


def real_batches(images: np.ndarray | torch.Tensor, count: int, batch: int):
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(REAL_ORDER_SEED))
    for chunk in order[:count].split(batch):
        idx = chunk.numpy()
        yield torch.as_tensor(np.asarray(images[idx]))  # (B, C, H, W) uint8, in the fixed order


def fake_batches(G: nn.Module, config: Config, count: int, batch: int, device: torch.device,
                 first: int = 0, source: str = GENERATOR):
    """G's images for seeds first..count-1 (a conditional model's classes in turn), as uint8.
    NaN or inf pixels (a diverged generator) would become black or white images and a finite,
    meaningless score: they are counted on the device and refused after the first batch and at
    the end, naming `source`."""
    bad: torch.Tensor | None = None
    for start in range(first, count, batch):
        seeds = range(start, min(start + batch, count))
        z = latents_from_seeds(seeds, config.z_dim).to(device)
        c = labels_for_seeds(seeds, config)
        with torch.no_grad():
            x = G(z, None if c is None else c.to(device))
        nonfinite = (~torch.isfinite(x)).flatten(1).any(dim=1).sum()
        bad = nonfinite if bad is None else bad + nonfinite
        if start == first:
            _require_finite_images(bad, seeds.stop - first, source)
        yield to_uint8(x)  # as a user would save them
    if bad is not None:
        _require_finite_images(bad, count - first, source)


def _require_finite_images(bad: torch.Tensor, made: int, source: str) -> None:
    if int(bad):
        raise CheckpointError(f"{source} makes images with NaN or inf pixels for {int(bad)} of "
                              f"{made} latent seeds: a broken checkpoint (training diverged, or its "
                              "weights are damaged); score or resume an earlier checkpoint")


class Evaluator:
    """Scores generators against one dataset's real statistics with one feature network."""

    def __init__(self, net: inception.FeatureNet, real: FeatureStats, real_stats: str,
                 metrics: list[str], num_fake: int, log: RunLog | None = None) -> None:
        self.net, self.real, self.real_stats = net, real, real_stats
        self.metrics, self.num_fake = metrics, num_fake
        self.progress = log.task if log is not None else None

    def __call__(self, G: nn.Module, config: Config, source: str = GENERATOR) -> EvalResult:
        """G's scores; `source` names G in messages (a checkpoint's G_ema, say). The feature
        metrics score the fakes' features, extracted once for all of them; the generator metrics
        score G itself, on rank 0 alone."""
        t0 = time.perf_counter()
        was_training = G.training
        G.eval()
        try:
            scores, count = self._from_features(G, config, source)
            if scores is not None:
                scores.update(compute_generated(self.metrics, G, config, self.net.device,
                                                self.num_fake, source))
        finally:
            G.train(was_training)
        return EvalResult(scores or {}, self.real.count, count, round(time.perf_counter() - t0, 2),
                          self.real_stats, self.net.describe())

    def _from_features(self, G: nn.Module, config: Config, source: str) -> tuple[Scores | None, int]:
        """The feature metrics' scores and the number of fakes they are of; None on another rank
        than 0, which scores every rank's fakes once."""
        if not features_of(self.metrics):  # no fakes through the feature network for nothing
            return ({} if distributed.WORLD.writer else None), self.num_fake
        first, stop = distributed.share(self.num_fake)  # this process's seeds: all, alone
        batch = batch_size_for(self.net.device)
        fakes = fake_batches(G, config, stop, batch, self.net.device, first, source)
        acc = _accumulate(self.net, fakes, stop - first, "features of the fakes", self.progress)
        merged = distributed.merge_features(acc)  # every process's fakes, on rank 0
        if merged is None:
            return None, self.num_fake
        fake = merged.result()
        return compute(self.metrics, self.real, fake, self.net.device), fake.count


@dataclass(frozen=True)
class CountOptions:
    """How the caller names the numbers of fakes and reals, for the messages that say to raise
    them: `ganctl eval`'s options (the default), training's, or the Python API's arguments."""

    fake: str = "--num"
    real: str = "--num-real"
    all_real: str = "leave --num-real out for all of them"


EVAL_OPTIONS = CountOptions()
TRAIN_OPTIONS = CountOptions("--eval-num", "--eval-num-real", "0 for all of them")
API_ARGUMENTS = CountOptions("num=", "num_real=", "None for all of them")


def check_counts(metrics: list[str], num_fake: int, num_real: int | None,
                 options: CountOptions = EVAL_OPTIONS) -> None:
    """Enough fakes, and enough reals when a number is asked, for every metric: refused before
    the data, the generator or any feature is computed (minutes), naming the option to raise."""
    need, title = least_images(metrics)
    if num_fake < need:
        raise ConfigError(f"{title} needs at least {need} fake images, got {num_fake}; raise "
                          f"{options.fake} to {need} or more")
    if num_real and num_real < need:
        raise ConfigError(f"{title} needs at least {need} real images, got {num_real}; raise "
                          f"{options.real} to {need} or more, or {options.all_real}")


def make_evaluator(config: Config, data: ImageSet, device: torch.device, metrics: list[str],
                   num_fake: int, num_real: int | None, inception_path: str | None,
                   download: bool, log: RunLog, progress: bool = True,
                   options: CountOptions = EVAL_OPTIONS) -> Evaluator:
    """The feature network and the real statistics (from the cache, or computed and cached).
    progress=False: the evaluator shows no progress bar (training shows its own); `options`:
    what the caller calls the numbers of images, for its messages."""
    check_counts(metrics, num_fake, num_real, options)
    count = len(data.images) if not num_real else min(num_real, len(data.images))
    need, title = least_images(metrics)
    if count < need:
        raise ConfigError(f"{title} needs at least {need} real images; {config.dataset} has "
                          f"{len(data.images)}: score against a dataset with more (--dataset)")
    net = inception.load(inception.locate(inception_path, download, log.task), device)
    depends = {"fingerprint": data.fingerprint, "resolution": config.resolution,
               "channels": config.channels, "crop": config.crop, "feature_net_sha256": net.sha256}
    key = stats_key(dataset=data.fingerprint, resolution=config.resolution, channels=config.channels,
                    crop=config.crop, feature_net=net.sha256, num_real=count)
    path = default_cache_dir() / f"{_slug(config.dataset)}-{key}.stats.safetensors"
    shown = log if progress else None
    real = _cached(path, count, depends, log)
    if real is not None:
        log.info(f"real statistics of {count} images from the cache: {path}")
        return Evaluator(net, real, f"cache {path}", metrics, num_fake, shown)
    real = extract(net, real_batches(data.images, count, batch_size_for(device)), count,
                   f"features of {count} real images of {config.dataset}", log.task)
    _store(path, real, {"dataset": config.dataset, **depends}, log)
    return Evaluator(net, real, f"computed {path}", metrics, num_fake, shown)


def _cached(path: Path, count: int, depends: dict[str, Any], log: RunLog) -> FeatureStats | None:
    """The cached real statistics if they are whole and are of what is asked; a damaged file is
    said in one line and then computed again (and replaced, atomically), never trusted."""
    try:
        return load_stats(path, count, inception.FEATURES, depends)
    except DamagedStats as e:
        log.info(f"cached statistics {path} were damaged ({e}); computing them again")
        return None


def _store(path: Path, real: FeatureStats, meta: dict[str, Any], log: RunLog) -> None:
    """Cache the real statistics; a cache that cannot be written (full, read-only) costs the
    next evaluation their computing again, not this one its scores."""
    try:
        save_stats(path, real, meta)
    except OSError as e:
        log.info(f"real statistics not cached in {path} ({e.strerror or e}); they will be computed "
                 "again next time")
        return
    log.info(f"real statistics cached in {path}")


def evaluate_checkpoint(header: Header, device: torch.device, metrics: list[str], num_fake: int,
                        num_real: int | None, overrides: dict[str, Any], inception_path: str | None,
                        download: bool, log: RunLog, options: CountOptions = EVAL_OPTIONS
                        ) -> dict[str, Any]:
    """`ganctl eval`: a checkpoint's G_ema against its training data (or `overrides`' dataset);
    the result is appended to the run's metrics.jsonl as an "eval" event."""
    check_counts(metrics, num_fake, num_real, options)  # before the generator and the data are read
    loaded = load_generator(header, device, noise_mode="random")  # the distribution G learnt
    config = loaded.config.replace(**overrides, batch_size=1)
    data = load_dataset(config, download=download, progress=log.task)
    evaluator = make_evaluator(config, data, device, metrics, num_fake, num_real, inception_path,
                               download, log, options=options)
    result = evaluator(loaded.G, loaded.config, f"the G_ema of {header.path}")
    doc = {"checkpoint": str(header.path), "step": header.step, "dataset": config.dataset,
           "split": config.split or None, **result.to_dict()}
    if header.path.parent.name == rundir.CKPT_DIR and rundir.is_run_dir(header.path.parent.parent):
        log.attach(header.path.parent.parent / rundir.METRICS)
        log.event(result.record(header.step, checkpoint=header.path.name, dataset=config.dataset),
                  f"eval of {header.path.name}: {result.summary()}")
    return doc

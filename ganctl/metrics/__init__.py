"""Metric registry: name -> a pure function of the real and fake feature statistics.

fid   Frechet Inception Distance (fid.py)
kid   Kernel Inception Distance, mean and std over subsets (kid.py)
pr    improved precision and recall, k = 3 (pr.py)
A new metric is a function here (and its file), plus one line in METRICS.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ganctl.errors import ConfigError, FeatureNetError, did_you_mean, shorten
from ganctl.metrics.fid import frechet_distance, frechet_distance_of_features
from ganctl.metrics.kid import SUBSET_SIZE, SUBSETS, kernel_inception_distance
from ganctl.metrics.pr import K, precision_recall
from ganctl.metrics.stats import (
    FEATURE_LIMIT,
    KEEP,
    MIN_COUNT,
    PROTOCOL_VERSION,
    VARIANCE_LIMIT,
    FeatureStats,
)

Scores = dict[str, float | int]
MetricFn = Callable[[FeatureStats, FeatureStats, torch.device], Scores]


def _fid(real: FeatureStats, fake: FeatureStats, device: torch.device) -> Scores:
    if real.count == len(real.kept) and fake.count == len(fake.kept) \
            and max(real.count, fake.count) < real.mean.shape[0]:
        # every feature at hand and fewer images than features: the same value, much faster
        return {"fid": frechet_distance_of_features(real.kept, fake.kept)}
    return {"fid": frechet_distance(real.mean, real.cov, fake.mean, fake.cov)}


def _kid(real: FeatureStats, fake: FeatureStats, device: torch.device) -> Scores:
    kid = kernel_inception_distance(real.kept, fake.kept, device=device)
    return {"kid": kid.mean, "kid_std": kid.std, "kid_subsets": kid.subsets,
            "kid_subset_size": kid.subset_size}


def _pr(real: FeatureStats, fake: FeatureStats, device: torch.device) -> Scores:
    pr = precision_recall(torch.from_numpy(real.kept).to(device), torch.from_numpy(fake.kept).to(device))
    return {"precision": pr.precision, "recall": pr.recall, "pr_k": pr.k,
            "pr_real": len(real.kept), "pr_fake": len(fake.kept)}


METRICS: dict[str, MetricFn] = {"fid": _fid, "kid": _kid, "pr": _pr}
# the fewest images of each side (reals, fakes) a metric is defined on: a covariance needs 2,
# KID's unbiased estimate subsets of 2, precision/recall a k-th neighbour other than the point
LEAST_IMAGES = {"fid": MIN_COUNT, "kid": 2, "pr": K + 1}
TITLES = {"fid": "FID", "kid": "KID", "pr": f"precision/recall (k = {K})"}

PROTOCOL = {
    "version": PROTOCOL_VERSION,
    "images": "uint8 RGB as saved (grey repeated to 3 channels); fakes from G_ema, latent seeds 0..N-1",
    "resize": "to 299x299, bilinear: inside NVlabs' file (nvlabs form), else torch interpolate "
              "with align_corners=False and no antialiasing (float299 form)",
    "features": "TF Inception-v3 pool3, 2048 features, fp32, TF32 off",
    "fid": "float64 mean and unbiased covariance; trace of the root via eigh of S1^1/2 S2 S1^1/2",
    "kid": f"unbiased MMD^2, kernel (x.y/d + 1)^3, {SUBSETS} subsets of min({SUBSET_SIZE}, N), "
           "mean and std",
    "pr": f"Kynkaanniemi et al. 2019, k = {K}, on min({KEEP}, N) images of each side",
    "real_subset": f"reals in a fixed random order (seed 0): the first N; KID and PR use the first "
                   f"min({KEEP}, N)",
}


def parse_metrics(text: str) -> list[str]:
    """'fid,kid' -> ['fid', 'kid']; unknown names are a ConfigError naming the choices."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"no metric given; choose from {', '.join(METRICS)}")
    for name in names:
        if name not in METRICS:
            raise ConfigError(f"unknown metric {shorten(name)}{did_you_mean(name, METRICS)}; choose "
                              f"from {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def least_images(names: list[str]) -> tuple[int, str]:
    """The fewest images of each side that every metric in `names` is defined on, and the title
    of the metric that needs them (for the message asking for more)."""
    need, name = max((LEAST_IMAGES[n], n) for n in names)
    return need, TITLES[name]


def check_inputs(names: list[str], real: FeatureStats, fake: FeatureStats) -> None:
    """What the arithmetic assumes, checked before it runs: the same number of features on both
    sides, enough images for every metric, finite values (numpy's eigh or SVD would otherwise
    fail with a LinAlgError, or the score would be NaN) no larger than float32 features can give
    (within them FID and KID stay finite in float64)."""
    if real.mean.shape != fake.mean.shape:
        raise FeatureNetError(f"the real statistics have {real.mean.shape[0]} features per image and "
                              f"the fakes {fake.mean.shape[0]}; compute both with the same feature network")
    need, title = least_images(names)
    for side, stats in (("real", real), ("fake", fake)):
        if min(stats.count, len(stats.kept)) < need:
            raise ConfigError(f"{title} needs at least {need} {side} images, got {stats.count}; "
                              "score more images")
        for what, array, limit in (("mean", stats.mean, FEATURE_LIMIT),
                                   ("features", stats.kept, FEATURE_LIMIT),
                                   ("covariance", stats.cov, VARIANCE_LIMIT)):
            if not np.isfinite(array).all():
                raise FeatureNetError(f"the {side} images' feature {what} has NaN or inf values; the "
                                      "feature network file or the images are broken")
            if array.size and float(np.abs(array).max()) > limit:
                raise FeatureNetError(f"the {side} images' feature {what} has values beyond what float32 "
                                      f"features can give ({float(np.abs(array).max()):.3g}); the "
                                      "feature network file or the images are broken")


def compute(names: list[str], real: FeatureStats, fake: FeatureStats, device: torch.device) -> Scores:
    check_inputs(names, real, fake)
    scores: Scores = {}
    for name in names:
        scores.update(_finite(name, real, fake, device))
    return scores


def _finite(name: str, real: FeatureStats, fake: FeatureStats, device: torch.device) -> Scores:
    """One metric's scores, never a NaN or inf one: a number no JSON reader can read, and a
    'best' checkpoint chosen by it. numpy's overflow is an error here, not a RuntimeWarning
    printed on the user's terminal."""
    try:
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            scores = METRICS[name](real, fake, device)
    except FloatingPointError as e:
        raise _unscorable(name, str(e), real, fake) from None
    for key, value in scores.items():
        if not np.isfinite(value):
            raise _unscorable(name, f"its {key} came out {value}", real, fake)
    return scores


def _unscorable(name: str, why: str, real: FeatureStats, fake: FeatureStats) -> FeatureNetError:
    """The error for a metric whose arithmetic broke, naming the side whose features are the
    larger (the likelier culprit) and both sides' largest feature second moment."""
    size = {side: float(np.max(np.abs(stats.mean) ** 2 + np.abs(np.diag(stats.cov))))
            for side, stats in (("real", real), ("fake", fake))}
    side = max(size, key=lambda s: size[s])
    return FeatureNetError(f"{TITLES[name]} cannot be computed ({why}) from the feature statistics of "
                           f"the {side} images (largest mean^2 + variance {size['real']:.3g} for the "
                           f"reals, {size['fake']:.3g} for the fakes); the feature network file or the "
                           f"{side} images are broken")

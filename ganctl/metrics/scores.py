"""The registry's metrics computed and checked: a feature metric's inputs before its arithmetic
runs, every metric's scores after (never a NaN or inf one: a number no JSON reader can read, and
a 'best' checkpoint chosen by it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ganctl.errors import CheckpointError, ConfigError, FeatureNetError
from ganctl.metrics import METRICS, least_images
from ganctl.metrics.metric import FeatureFn, GeneratorFn, Scores
from ganctl.metrics.stats import FEATURE_LIMIT, VARIANCE_LIMIT, FeatureStats

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ganctl.config import Config


class _Broken(Exception):
    """Why a metric's arithmetic broke (its caller says of what)."""


def features_of(names: list[str]) -> list[tuple[str, FeatureFn]]:
    """The metrics among `names` computed from feature statistics, with their functions."""
    return [(n, fn) for n in names if (fn := METRICS[n].features) is not None]


def generated_of(names: list[str]) -> list[tuple[str, GeneratorFn]]:
    """The metrics among `names` computed from the generator itself, with their functions."""
    return [(n, fn) for n in names if (fn := METRICS[n].generator) is not None]


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
    """The scores of the feature metrics among `names` (the others are compute_generated's)."""
    chosen = features_of(names)
    if not chosen:
        return {}
    check_inputs([name for name, _ in chosen], real, fake)
    scores: Scores = {}
    for name, fn in chosen:
        try:
            scores.update(_finite(fn, real, fake, device))
        except _Broken as e:
            raise _unscorable(name, str(e), real, fake) from None
    return scores


def compute_generated(names: list[str], G: nn.Module, config: Config, device: torch.device, count: int,
                      source: str) -> Scores:
    """The scores of the generator metrics among `names`, of G (`source` names it in messages)
    with `count` images."""
    scores: Scores = {}
    for name, fn in generated_of(names):
        try:
            scores.update(_finite(fn, G, config, device, count))
        except _Broken as e:
            raise CheckpointError(f"{METRICS[name].title} cannot be computed ({e}) for {source}: a "
                                  "broken checkpoint (training diverged, or its weights are damaged); "
                                  "score or resume an earlier checkpoint") from None
    return scores


def _finite(fn: Callable[..., Scores], *args: Any) -> Scores:
    """fn(*args), whose scores are all finite, else _Broken. numpy's overflow is an error here,
    not a RuntimeWarning printed on the user's terminal."""
    try:
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            scores = fn(*args)
    except FloatingPointError as e:
        raise _Broken(str(e)) from None
    for key, value in scores.items():
        if not np.isfinite(value):
            raise _Broken(f"its {key} came out {value}")
    return scores


def _unscorable(name: str, why: str, real: FeatureStats, fake: FeatureStats) -> FeatureNetError:
    """The error for a metric whose arithmetic broke, naming the side whose features are the
    larger (the likelier culprit) and both sides' largest feature second moment."""
    size = {side: float(np.max(np.abs(stats.mean) ** 2 + np.abs(np.diag(stats.cov))))
            for side, stats in (("real", real), ("fake", fake))}
    side = max(size, key=lambda s: size[s])
    return FeatureNetError(f"{METRICS[name].title} cannot be computed ({why}) from the feature statistics of "
                           f"the {side} images (largest mean^2 + variance {size['real']:.3g} for the "
                           f"reals, {size['fake']:.3g} for the fakes); the feature network file or the "
                           f"{side} images are broken")

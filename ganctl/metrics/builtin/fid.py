"""FID as ganctl scores and shows it; the maths is ganctl/metrics/fid.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ganctl.metrics.metric import Column, Metric, Scores
from ganctl.metrics.protocol import MIN_COUNT

if TYPE_CHECKING:
    import torch

    from ganctl.metrics.stats import FeatureStats


def _fid(real: FeatureStats, fake: FeatureStats, device: torch.device) -> Scores:
    from ganctl.metrics.fid import frechet_distance, frechet_distance_of_features  # noqa: PLC0415

    if real.count == len(real.kept) and fake.count == len(fake.kept) \
            and max(real.count, fake.count) < real.mean.shape[0]:
        # every feature at hand and fewer images than features: the same value, much faster
        return {"fid": frechet_distance_of_features(real.kept, fake.kept)}
    return {"fid": frechet_distance(real.mean, real.cov, fake.mean, fake.cov)}


FID = Metric(
    name="fid", title="FID",
    columns=(Column("fid", "FID", "{:.3f}", panel="FID"),),
    protocol="float64 mean and unbiased covariance; trace of the root via eigh of S1^1/2 S2 S1^1/2",
    least_images=MIN_COUNT,  # a covariance needs 2
    features=_fid)

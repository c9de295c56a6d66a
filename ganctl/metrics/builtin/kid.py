"""KID as ganctl scores and shows it: the mean and std over subsets; the maths is
ganctl/metrics/kid.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ganctl.metrics.metric import Column, Metric, Scores
from ganctl.metrics.protocol import SUBSET_SIZE, SUBSETS

if TYPE_CHECKING:
    import torch

    from ganctl.metrics.stats import FeatureStats


def _kid(real: FeatureStats, fake: FeatureStats, device: torch.device) -> Scores:
    from ganctl.metrics.kid import kernel_inception_distance  # noqa: PLC0415

    kid = kernel_inception_distance(real.kept, fake.kept, device=device)
    return {"kid": kid.mean, "kid_std": kid.std, "kid_subsets": kid.subsets,
            "kid_subset_size": kid.subset_size}


KID = Metric(
    name="kid", title="KID",
    columns=(Column("kid", "KID", "{:.5f}", row="KID ({kid_subsets} x {kid_subset_size})",
                    spread="kid_std", panel="KID"),),
    protocol=f"unbiased MMD^2, kernel (x.y/d + 1)^3, {SUBSETS} subsets of min({SUBSET_SIZE}, N), "
             "mean and std",
    least_images=2,  # the unbiased estimate needs subsets of 2
    features=_kid)

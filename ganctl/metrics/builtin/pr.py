"""Improved precision and recall as ganctl scores and shows them; the maths is
ganctl/metrics/pr.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ganctl.metrics.metric import Column, Metric, Scores
from ganctl.metrics.protocol import KEEP, K

if TYPE_CHECKING:
    import torch

    from ganctl.metrics.stats import FeatureStats

PANEL = "precision / recall"


def _pr(real: FeatureStats, fake: FeatureStats, device: torch.device) -> Scores:
    import torch  # noqa: PLC0415

    from ganctl.metrics.pr import precision_recall  # noqa: PLC0415

    pr = precision_recall(torch.from_numpy(real.kept).to(device), torch.from_numpy(fake.kept).to(device))
    return {"precision": pr.precision, "recall": pr.recall, "pr_k": pr.k,
            "pr_real": len(real.kept), "pr_fake": len(fake.kept)}


PR = Metric(
    name="pr", title=f"precision/recall (k = {K})",
    columns=(Column("precision", "precision", "{:.3f}", row="precision (k={pr_k})", panel=PANEL),
             Column("recall", "recall", "{:.3f}", row="recall (k={pr_k})", panel=PANEL)),
    protocol=f"Kynkaanniemi et al. 2019, k = {K}, on min({KEEP}, N) images of each side",
    least_images=K + 1,  # a k-th neighbour other than the point itself
    lower_is_better=False,
    features=_pr)

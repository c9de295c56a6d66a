"""What a metric is to ganctl (Metric): its name, the scores it gives and how each is shown
(Column: the eval table, log lines, a `ganctl plot` panel, TensorBoard and W&B), the fewest
images it is defined on, its line of the protocol, and what it is computed from: the real and
fake feature statistics (`features`), or the generator itself (`generator`: perceptual path
length, say).

Light on purpose: the registry is read by `ganctl --help`, before anything needs torch, so a
metric's file imports numpy and torch inside the functions that compute it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ganctl.config import Config
    from ganctl.metrics.stats import FeatureStats

Scores = dict[str, float | int]
# (real, fake, device): the scores of the fakes' features against the reals'
FeatureFn = Callable[["FeatureStats", "FeatureStats", "torch.device"], Scores]
# (G, its config, device, count): G's scores (G is G_ema, in eval mode; count is --num)
GeneratorFn = Callable[["nn.Module", "Config", "torch.device", int], Scores]


@dataclass(frozen=True)
class Column:
    """One score of a metric as ganctl shows it."""

    key: str  # in the scores: `ganctl eval --json`, metrics.jsonl, the checkpoint header
    label: str  # in log lines and the progress line: "FID", "precision"
    fmt: str  # its value in the eval table and the progress line: "{:.3f}"
    row: str = ""  # its eval-table row, a format of all the scores ("KID ({kid_subsets} x ...)"); label if ""
    spread: str | None = None  # a score shown after it as ± (KID's std over its subsets)
    panel: str | None = None  # the `ganctl plot` panel that draws it, also sent to TensorBoard/W&B

    def title(self, scores: Mapping[str, Any]) -> str:
        return self.row.format_map(scores) if self.row else self.label

    def text(self, scores: Mapping[str, Any]) -> str:
        value = shown(self.fmt, scores[self.key])
        return value if self.spread is None else f"{value} ± {shown(self.fmt, scores[self.spread])}"


def shown(fmt: str, value: Any) -> str:
    """A score in `fmt`; one that is not a number (a non-finite score, as text in JSON) as it is."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return fmt.format(value) if number else str(value)


@dataclass(frozen=True)
class Metric:
    """A metric: one file defines it, one line of ganctl.metrics.METRICS registers it."""

    name: str  # as --metrics takes it, and its key in METRICS
    title: str  # in messages: "FID", "precision/recall (k = 3)"
    columns: tuple[Column, ...]  # the scores shown, the headline first
    protocol: str  # how it is computed: its line of `ganctl eval --json`'s protocol
    least_images: int = 2  # the fewest images of each side (reals, fakes) it is defined on
    lower_is_better: bool = True  # of its headline column
    features: FeatureFn | None = None  # computed from the feature statistics, or ...
    generator: GeneratorFn | None = None  # ... from G itself

    def __post_init__(self) -> None:
        if (self.features is None) == (self.generator is None):
            raise ValueError(f"metric {self.name!r}: give it features or generator, one of them")

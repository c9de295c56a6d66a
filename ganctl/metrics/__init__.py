"""The metric registry: a metric is one file (a Metric, see metric.py) and one line in METRICS.

fid   Frechet Inception Distance (builtin/fid.py; the maths: fid.py)
kid   Kernel Inception Distance, mean and std over subsets (builtin/kid.py; kid.py)
pr    improved precision and recall, k = 3 (builtin/pr.py; pr.py)

What names or shows a score reads it from here: --metrics and its help (names_help), the eval
table (format_rows), log lines (summary), `ganctl plot`'s panels and the scalars TensorBoard and
W&B get (panels, plotted), the protocol of `ganctl eval --json` (protocol_doc). Computing the
scores is scores.py's: the feature metrics from the Inception features of the fakes, extracted
once for all of them, the generator metrics from G_ema itself.

This module imports neither numpy nor torch: `ganctl --help` reads it. So a metric's file
imports them inside the function that computes it (builtin/pr.py, say).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ganctl.errors import ConfigError, did_you_mean, shorten
from ganctl.metrics.builtin.fid import FID
from ganctl.metrics.builtin.kid import KID
from ganctl.metrics.builtin.pr import PR
from ganctl.metrics.metric import Column, Metric, Scores, shown
from ganctl.metrics.protocol import FEATURES, PROTOCOL_VERSION, REALS

__all__ = ["BEST", "METRICS", "Column", "Metric", "Scores", "better", "columns", "format_rows", "headline",
           "least_images", "names_help", "panels", "parse_metrics", "plotted", "protocol_doc", "summary"]

METRICS: dict[str, Metric] = {metric.name: metric for metric in (
    FID,
    KID,
    PR,
)}
BEST = "fid"  # the score by which a run's best checkpoint is chosen (checkpoints/best)
SHORT = "{:.4g}"  # a score in a log line


def names_help() -> str:
    """The metrics' names for help texts: "fid, kid, pr"."""
    return ", ".join(METRICS)


def parse_metrics(text: str) -> list[str]:
    """'fid,kid' -> ['fid', 'kid']; unknown names are a ConfigError naming the choices."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"no metric given; choose from {names_help()}")
    for name in names:
        if name not in METRICS:
            raise ConfigError(f"unknown metric {shorten(name)}{did_you_mean(name, METRICS)}; choose "
                              f"from {names_help()}")
    return list(dict.fromkeys(names))


def least_images(names: list[str]) -> tuple[int, str]:
    """The fewest images of each side that every metric in `names` is defined on, and the title
    of the metric that needs them (for the message asking for more)."""
    need, name = max((METRICS[n].least_images, n) for n in names)
    return need, METRICS[name].title


def columns() -> list[Column]:
    """Every metric's columns, in the registry's order."""
    return [column for metric in METRICS.values() for column in metric.columns]


def plotted() -> list[str]:
    """The scores `ganctl plot` draws, which TensorBoard and W&B get too (as eval/<key>)."""
    return [column.key for column in columns() if column.panel]


def panels() -> dict[str, list[str]]:
    """`ganctl plot`'s panels of scores: title -> the keys it draws, in the registry's order."""
    found: dict[str, list[str]] = {}
    for column in columns():
        if column.panel:
            found.setdefault(column.panel, []).append(column.key)
    return found


def format_rows(scores: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The eval table's rows, (metric, value), of the columns `scores` holds:
    [("FID", "12.345"), ("KID (100 x 1000)", "0.01234 ± 0.00056"), ...]."""
    return [(column.title(scores), column.text(scores)) for column in columns() if column.key in scores]


def summary(scores: Mapping[str, Any]) -> str:
    """The scores of a log line, in their order: "FID 12.35  KID 0.01234"."""
    labels = {column.key: column.label for column in columns()}
    return "  ".join(f"{labels[key]} {shown(SHORT, value)}" for key, value in scores.items() if key in labels)


def headline(key: str) -> tuple[Metric, Column]:
    """The metric that gives the score `key`, and its column."""
    for metric in METRICS.values():
        for column in metric.columns:
            if column.key == key:
                return metric, column
    raise KeyError(f"no metric gives a score named {key!r}")


def better(score: float, than: float) -> bool:
    """Whether BEST `score` beats `than`, in its metric's direction (FID: lower)."""
    metric, _ = headline(BEST)
    return score < than if metric.lower_is_better else score > than


def protocol_doc() -> dict[str, Any]:
    """How the scores are computed, as `ganctl eval --json` says: the features, each metric's
    line, the reals."""
    lines = {name: metric.protocol for name, metric in METRICS.items()}
    return {"version": PROTOCOL_VERSION, **FEATURES, **lines, **REALS}

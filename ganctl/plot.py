"""Curves of a run against step, drawn from its metrics.jsonl: `ganctl plot` and the curves.png
that training refreshes at its sample steps.

matplotlib is imported inside the function that draws, so that `ganctl --help` and a run that
never draws do not pay for it; it draws with the Agg backend, whatever the user's default is.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganctl import metrics, metricsfile, rundir
from ganctl.errors import RunError, first_line
from ganctl.fsutil import atomic_write
from ganctl.output.progress import LABELS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CURVES = rundir.CURVES  # in the run directory, refreshed while training
SIZE = (12.0, 8.0)  # inches: at DPI, 1200 x 800 pixels whatever is drawn
DPI = 100
MAX_POINTS = 2000  # per curve: a long run's records are averaged in buckets down to this many
FEW = 20  # points up to which a curve's points are marked
MAX_SHARE = 0.05  # of training time spent redrawing curves.png
DRAW_GUESS = 0.2  # seconds a draw is assumed to take until one is timed (the first: ~4 s in)
MARKED_EVENTS = ("rollback", "diverged")  # drawn as dotted lines across every panel
MARK_LABEL = "rollback"  # the dotted lines' legend entry, once per panel
CLIP = 1e100  # |value| drawn at most: axis arithmetic overflows near 1e308; a divergence still shows
WIDE = 1e3  # max|v| / median|v| beyond which a panel's y axis is logarithmic (a diverging loss)
NOT_CURVES = ("step", "time")  # numbers of a record that are not drawn against step
# title, the step records' keys ("loss_" stands for every loss a run reports); then the panels of
# the scores of evaluations, the metric registry's (ganctl.metrics.panels)
PANELS = (("losses", ("loss_",)), ("D outputs", ("D_real", "D_fake")),
          ("augmentation", ("augment_p", "augment_rt")), ("images/s", ("img_per_s",)))


@dataclass
class Curve:
    # machine arrays, not lists: numpy reads them without a copy (a long run has 100,000s)
    steps: array = field(default_factory=lambda: array("d"))
    values: array = field(default_factory=lambda: array("d"))

    def add(self, step: int, value: float) -> None:
        self.steps.append(step)
        self.values.append(value)

    def arrays(self) -> tuple[Any, Any]:
        """(steps, values) as arrays, by step (`ganctl eval` of an older checkpoint appends an
        earlier step), at most MAX_POINTS of them: a long run is averaged in buckets of k
        consecutive records, its trend drawn as fast as a short run's."""
        import numpy as np

        x, y = np.frombuffer(self.steps), np.frombuffer(self.values)
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        k = math.ceil(len(x) / MAX_POINTS)
        if k <= 1:
            return x, y
        starts = np.arange(0, len(x), k)
        sizes = np.diff(np.append(starts, len(x)))  # k, ..., k, and what is left for the last
        return np.add.reduceat(x, starts) / sizes, np.add.reduceat(y, starts) / sizes


@dataclass
class Panel:
    title: str
    curves: dict[str, Curve]  # by label


@dataclass
class Series:
    """The numbers of a run's records by key, filled in one pass as records come (a long run's
    refresh reads only what was appended since the last)."""

    logged: dict[str, Curve] = field(default_factory=dict)  # step records, by key
    eval: dict[str, Curve] = field(default_factory=dict)  # eval events' plotted scores
    marks: set[int] = field(default_factory=set)  # steps of MARKED_EVENTS
    run: str = ""  # the run's name (its folder), in the figure's title
    last: int | None = None  # the highest step of a record drawn or marked

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            step, event = r.get("step"), r.get("event")
            if not isinstance(step, int) or isinstance(step, bool) or step < 0:
                continue  # not a training record (a negative step included)
            if event in MARKED_EVENTS:
                self.marks.add(step)
            elif event is None or event == "eval":
                into, keys = (self.logged, r) if event is None else (self.eval, metrics.plotted())
                for key in keys:
                    value = _number(r.get(key)) if key not in NOT_CURVES else None
                    if value is not None:
                        into.setdefault(key, Curve()).add(step, value)
            else:
                continue
            self.last = step if self.last is None else max(self.last, step)

    def panels(self) -> list[Panel]:
        """One panel per kind of number present: losses, D's outputs, images/s, each metric's."""
        found = []
        for title, keys, series in [*((t, k, self.logged) for t, k in PANELS),
                                    *((t, k, self.eval) for t, k in metrics.panels().items())]:
            names = [k for k in series if k.startswith("loss_")] if keys == ("loss_",) else keys
            curves = {LABELS.get(k, k): series[k] for k in names if k in series}
            if curves:
                found.append(Panel(title, curves))
        return found


def _number(value: Any) -> float | None:
    """A record's value as drawn: None for what is not a finite number (a gap in its curve), an
    absurd magnitude held at ±CLIP."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        value = float(value)  # an int past float's range raises
    except OverflowError:
        return None
    return max(-CLIP, min(CLIP, value)) if math.isfinite(value) else None


def y_scale(values: Any) -> tuple[str, dict[str, float]]:
    """(scale, its arguments) for a panel's y values: linear unless they span more than WIDE
    (max|v| / median of the non-zero |v|, e.g. a loss diverging to 1e37 beside losses near 1),
    then log when all are positive, else symlog, linear within the median |v| of 0."""
    import numpy as np

    size = np.abs(np.asarray(values, dtype=float))
    nonzero = size[size > 0]
    if not len(nonzero) or nonzero.max() <= WIDE * np.median(nonzero):
        return "linear", {}
    if (np.asarray(values) > 0).all():
        return "log", {}
    return "symlog", {"linthresh": float(np.median(nonzero))}


def draw(series: Series, out: Path) -> Path:
    """The panels of `series` as one PNG of SIZE at DPI, titled with the run and its last step,
    written atomically (a viewer never sees half a file). Raises RunError when there is nothing
    to draw, OSError when `out` cannot be written."""
    buf = io.BytesIO()
    # values are finite and clipped: any warning left (numpy's, matplotlib's) is noise to a user
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # no bbox_inches="tight": the size stays fixed
        figure(series).savefig(buf, format="png", dpi=DPI)
    atomic_write(out, buf.getvalue())
    return out


def figure(series: Series) -> Figure:
    """The matplotlib Figure of `series`' panels, on an Agg canvas; RunError when it has none."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    shown = series.panels()
    if not shown:
        raise RunError("no step records to plot yet")
    fig = Figure(figsize=SIZE, dpi=DPI)
    FigureCanvasAgg(fig)  # Agg, not the user's interactive default
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.07, top=0.91, wspace=0.18, hspace=0.35)
    # a folder name that is not UTF-8 (its bytes as surrogates) is drawn with replacement marks
    run = series.run.encode("utf-8", "replace").decode("utf-8")
    fig.suptitle(" — ".join(filter(None, (run, f"step {series.last:,}"))))
    cols = math.ceil(math.sqrt(len(shown)))
    rows = math.ceil(len(shown) / cols)
    first = None
    steps = set(series.marks)
    for i, panel in enumerate(shown):
        # one step axis for all: a score lines up with the losses of its step
        ax = fig.add_subplot(rows, cols, i + 1, sharex=first)
        first = first or ax
        ys = []
        for label, curve in panel.curves.items():
            x, y = curve.arrays()
            steps.update(x.tolist())
            ys.append(y)
            # points marked while few (evaluations; a first record alone draws no line)
            ax.plot(x, y, label=label, linewidth=1, marker="." if len(x) <= FEW else None)
        scale, how = y_scale(np.concatenate(ys))
        ax.set_yscale(scale, **how)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps, never step 2.25
        for j, step in enumerate(sorted(series.marks)):  # where training rolled back
            ax.axvline(step, color="tab:red", linestyle=":", linewidth=0.8,
                       label=MARK_LABEL if j == 0 else None)
        ax.set_title(panel.title, fontsize="medium")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(panel.curves) > 1 or series.marks:
            ax.legend(fontsize="small")
    if first is not None and len(steps) == 1:  # one step: integers around it, not 9.45 .. 10.55
        step = steps.pop()
        half = max(1.0, round(step / 10))
        first.set_xlim(step - half, step + half)
    return fig


def plot_run(run_dir: Path, out: Path) -> Path:
    """Draw a run's curves (losses, D outputs, images/s, evaluation metrics) against step into
    `out`, a PNG of 1200 x 800 pixels; returns `out`. One-line RunError when `run_dir` is not a
    run, has no records yet, or `out` cannot be written."""
    if not rundir.is_run_dir(run_dir):
        raise RunError(f"{run_dir} is not a ganctl run directory; give one, e.g. "
                       "runs/0001-shapes-dcgan (`ganctl runs` lists them)")
    series = Series(run=run_dir.resolve().name)
    series.add(rundir.read_metrics(run_dir))
    if not series.panels():
        raise RunError(f"{run_dir} has no metrics to plot yet ({rundir.METRICS} holds no step "
                       "records); plot it again once training has logged (every log_every steps)")
    try:
        return draw(series, out)
    except OSError as e:
        raise RunError(f"cannot write {out} ({e.strerror or e}); choose another OUT") from None


class Curves:
    """RUN/curves.png, redrawn while training at sample steps, spending at most MAX_SHARE of the
    time on it (the run's last step is always drawn). It reads only what metrics.jsonl gained since
    the last draw, unless the file was rewritten (a rollback or resume trims it). A failure (a
    read-only or full disk, a plotting error) is reported once and never stops the run: curves
    are a view of the run, its checkpoints are the run."""

    def __init__(self, run_dir: Path, say: Callable[[str], None]) -> None:
        self.path = run_dir / CURVES
        self._metrics = metricsfile.Reader(run_dir / rundir.METRICS)
        self._say = say
        self._run = run_dir.resolve().name
        self._series = Series(run=self._run)
        # time.monotonic() before which a refresh is skipped (unless final): a short run draws
        # only its last step
        self._next = time.monotonic() + DRAW_GUESS / MAX_SHARE
        self._reported = False

    def refresh(self, final: bool = False) -> float:
        """Redraw, unless the last draw was too recent (`final`: the run's last step); returns the
        seconds it took."""
        if not final and time.monotonic() < self._next:
            return 0.0
        started = time.monotonic()
        try:
            records, restarted = self._metrics.new_records()
            if restarted:  # a rewritten file (a rollback, a resume): a new series
                self._series = Series(run=self._run)
            self._series.add(records)
            if self._series.panels():  # nothing logged yet (sample_every < log_every): no draw
                draw(self._series, self.path)
        except Exception as e:  # any failure of a by-product: hours of training matter more
            self._report(e)
        spent = time.monotonic() - started
        self._next = time.monotonic() + spent / MAX_SHARE
        return spent

    def _report(self, e: Exception) -> None:
        if not self._reported:
            self._reported = True
            why = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
            self._say(f"cannot refresh {self.path}: {why or type(e).__name__}; training goes on "
                      "(`ganctl plot` draws it later)")

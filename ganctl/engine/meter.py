"""A training run's statistics between records: summed on the device, read back once a record
(or a console line) is made, so the step never waits for the host."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class _Window:
    """The host values of a Meter's sums when a line was last shown (see Meter.peek)."""

    sums: dict[str, float]
    counts: dict[str, int]
    drawn: int
    t0: float


STATE_PREFIX = "augment_"  # statistics that are state (an adaptive p): recorded as last seen


class Meter:
    """Sums step statistics on the device; reads them back only when a record is made (or a
    line shown, see peek). Steps may report different names (a lazy phase's only on its steps):
    each name is averaged over the steps that reported it, except state (STATE_PREFIX), which a
    record shows as it was after the last step."""

    def __init__(self, batch_size: int, drawn: int) -> None:
        self.batch_size = batch_size
        self.total: dict[tuple[str, ...], torch.Tensor] = {}
        self.count: dict[tuple[str, ...], int] = {}
        self.latest: dict[tuple[str, ...], torch.Tensor] = {}  # groups holding state: last values
        self.drawn = drawn  # real batches drawn when the interval began
        self.t0 = time.perf_counter()
        self._shown = _Window({}, {}, drawn, self.t0)  # where the last peek left off

    def add(self, names: tuple[str, ...], values: torch.Tensor) -> None:
        seen = self.total.get(names)
        self.total[names] = values.clone() if seen is None else seen.add_(values)
        self.count[names] = self.count.get(names, 0) + 1
        if any(name.startswith(STATE_PREFIX) for name in names):
            self.latest[names] = values

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (compiling, evaluating: not training) out of images/s."""
        self.t0 += seconds
        self._shown.t0 += seconds

    def _sums(self) -> tuple[dict[str, float], dict[str, int], dict[str, float]]:
        """Sum and number of steps of each name since the interval began, and the state's
        values after the last step."""
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        state: dict[str, float] = {}
        if self.total:
            values = torch.cat([*self.total.values(), *self.latest.values()]).tolist()  # one sync
            names = [(name, self.count[group]) for group in self.total for name in group]
            for (name, n), value in zip(names, values[:len(names)], strict=True):
                sums[name] = sums.get(name, 0.0) + value
                counts[name] = counts.get(name, 0) + n
            last = [name for group in self.latest for name in group]
            state = {name: value for name, value in zip(last, values[len(names):], strict=True)
                     if name.startswith(STATE_PREFIX)}
        return sums, counts, state

    def _record(self, step: int, sums: dict[str, float], counts: dict[str, int], batches: int,
                elapsed: float, state: dict[str, float]) -> dict[str, Any]:
        rec: dict[str, Any] = {"step": step, "time": round(time.time(), 3)}
        for name in sorted(sums, key=lambda k: not k.startswith("loss")):  # losses first
            value = state.get(name, sums[name] / counts[name])
            # strict JSON has no inf or nan: a diagnostic that is not finite is written as text
            rec[name] = round(value, 5) if math.isfinite(value) else str(value)
        rec["img_per_s"] = round(batches * self.batch_size / max(elapsed, 1e-9), 1)
        return rec

    def record(self, step: int, drawn: int) -> dict[str, Any]:
        """The interval's record, and a new interval; img_per_s counts the real images drawn
        (D's, d_steps included)."""
        sums, counts, state = self._sums()
        rec = self._record(step, sums, counts, drawn - self.drawn, time.perf_counter() - self.t0,
                           state)
        self.total, self.count, self.latest, self.drawn = {}, {}, {}, drawn
        self.t0 = time.perf_counter()
        self._shown = _Window({}, {}, drawn, self.t0)
        return rec

    def peek(self, step: int, drawn: int) -> dict[str, Any]:
        """A record of the steps since the last record or peek, for the console alone. The
        interval goes on untouched: the next record averages all of it, as without peeks."""
        sums, counts, state = self._sums()
        last, now = self._shown, time.perf_counter()
        # the sums minus those the last peek read: float64 differences of float32 sums
        fresh = {k: n - last.counts.get(k, 0) for k, n in counts.items() if n > last.counts.get(k, 0)}
        rec = self._record(step, {k: sums[k] - last.sums.get(k, 0.0) for k in fresh}, fresh,
                           drawn - last.drawn, now - last.t0, state)
        self._shown = _Window(sums, counts, drawn, now)
        return rec

"""What keeps a run from being lost: stop signals, a time budget, and the divergence guard.

None of these touch the device every step: the guard accumulates its flags on the device and
is read only when the loop checks it (every --log-every steps and before every save).
"""

from __future__ import annotations

import re
import signal
import threading
import time
from types import FrameType

import torch
from torch import nn

from ganctl.errors import STOP_SIGNALS, ConfigError

MAX_ROLLBACKS = 3  # rollbacks in one process before the run stops with exit 1
LR_FACTOR = 0.5  # each rollback to the same checkpoint halves both learning rates again
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """'3h30m' -> 12600.0; units d, h, m, s."""
    compact = text.replace(" ", "").lower()
    parts = _DURATION_RE.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ConfigError(f"--max-time {text!r} is not a duration like 3h30m, 90m or 45s")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"--max-time {text!r} must be longer than zero")
    return seconds


class StopSignals:
    """While active, STOP_SIGNALS only record themselves: the loop finishes its step, writes a
    checkpoint and stops (exit 128 + N). Later signals (say, a second Ctrl-C while saving) are
    noted and ignored, so nothing is left half-written. A signal the process was told to
    ignore (nohup's SIGHUP) stays ignored."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


def deadline_after(seconds: float) -> float:
    """The time.monotonic() at which a budget of `seconds`, counted from now, runs out."""
    return time.monotonic() + seconds


class TimeBudget:
    """Stops a run in time to checkpoint before its deadline (a time.monotonic() value set when
    the command started, so start-up and data loading count too): exhausted() is true once one
    more step, its evaluation if one is due, and the checkpoint after it would pass the deadline.
    Steps are timed from the second on (the first pays for warm-up and stands in until then);
    checkpoint writes and evaluations are timed apart (pause) and kept out of the step time."""

    SAVE_GUESS = 1.0  # seconds a checkpoint write is assumed to take until one has been timed
    VIEW_GUESS = 0.5  # ... and the last redraw of curves.png, which follows the last checkpoint

    def __init__(self, deadline: float | None, start_step: int) -> None:
        self.deadline = deadline
        self.t0 = time.monotonic()
        self.first: tuple[float, int] | None = None  # (time, step) when the first step ended
        self.paused = 0.0  # seconds of checkpoints and evaluations since then
        self.save = self.SAVE_GUESS
        self.view = self.VIEW_GUESS
        self.eval = 0.0

    def pause(self, seconds: float, kind: str) -> None:
        """A checkpoint write ("save"), a redraw of the run's curves ("view") or an evaluation
        ("eval") that took `seconds`."""
        self.paused += seconds
        if kind == "save":
            self.save = seconds
        elif kind == "view":
            self.view = seconds
        else:
            self.eval = seconds

    def exhausted(self, step: int, eval_next: bool = False) -> bool:
        if self.deadline is None:
            return False
        now = time.monotonic()
        if self.first is None or step == self.first[1]:
            self.first = self.first or (now, step)
            per_step = now - self.t0  # the first step, warm-up and all: a generous estimate
        else:
            per_step = max(now - self.first[0] - self.paused, 0.0) / (step - self.first[1])
        ends = per_step + self.save + self.view + (self.eval if eval_next else 0.0)
        return now + ends > self.deadline


class DivergenceGuard:
    """Flags non-finite objectives (statistics named loss*) on the device, step by step, without
    reading them back; other statistics are diagnostics and may be anything."""

    def __init__(self, device: torch.device, step: int) -> None:
        self.device = device
        self._where: dict[tuple[str, ...], tuple[tuple[str, ...], torch.Tensor | None]] = {}
        self.reset(step)

    def reset(self, step: int) -> None:
        self.bad: dict[tuple[str, ...], torch.Tensor] = {}  # loss names -> (k,) bool
        self.count = torch.tensor(step, dtype=torch.int64, device=self.device)
        self.first_bad = torch.tensor(-1, dtype=torch.int64, device=self.device)

    def observe(self, names: tuple[str, ...], values: torch.Tensor) -> None:
        """values: (k,) the statistics `names` of the step just taken."""
        self.count += 1
        losses, index = self._losses(names)
        if not losses:
            return
        now = ~torch.isfinite(values if index is None else values.index_select(0, index))
        self.first_bad = torch.where((self.first_bad < 0) & now.any(), self.count, self.first_bad)
        seen = self.bad.get(losses)
        self.bad[losses] = now if seen is None else seen | now

    def _losses(self, names: tuple[str, ...]) -> tuple[tuple[str, ...], torch.Tensor | None]:
        """The objectives among `names`, and where they are (None: all of them), kept per names."""
        if names not in self._where:
            where = [i for i, n in enumerate(names) if n.startswith("loss")]
            index = None if len(where) == len(names) else torch.tensor(where, device=self.device)
            self._where[names] = tuple(names[i] for i in where), index
        return self._where[names]

    def check(self, *modules: nn.Module) -> tuple[str, int] | None:
        """(what broke, at which step) if anything went non-finite since the last reset: the
        first broken objective, else the weights."""
        params = [p for m in modules for p in m.parameters()]
        finite = torch.stack([p.isfinite().all() for p in params]).all()
        vector = torch.cat([*(b.long() for b in self.bad.values()), self.first_bad[None],
                            self.count[None], finite.long()[None]])
        *flags, first, count, ok = vector.tolist()  # the one sync
        names = [name for group in self.bad for name in group]
        broken = [name for name, bad in zip(names, flags, strict=True) if bad]
        if broken:
            return broken[0], first
        if not ok:
            return "a gradient (the weights became non-finite)", count
        return None

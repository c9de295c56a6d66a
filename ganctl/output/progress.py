"""What a run tells its user as it trains: records to metrics.jsonl and the sinks, a rich
progress bar on a terminal, plain lines otherwise (RunLog)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from ganctl import metricsfile
from ganctl.output.sinks import Sink, Watched, eval_scalars, scalar_tags
from ganctl.text import printable

if TYPE_CHECKING:
    import torch



# how the progress line (and curves.png) names a statistic
LABELS = {"D_real": "D(x)", "D_fake": "D(G(z))", "augment_p": "p", "augment_rt": "r_t"}
_NOT_STATS = frozenset({"step", "time", "img_per_s"})
# Lines by time as well as by step: whatever --log-every is, a user sees the run is alive (and
# how it goes) soon after it starts and then at least this often. The first step is left out:
# it may compile for minutes, and says so itself.
FIRST_LINE_S = 10.0  # after the first step
LINE_EVERY_S = 30.0  # after the last line
LONG_RUN_S = 30 * 60.0  # a run with this much still to go says so once, FIRST_LINE_S in


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def format_record(r: dict[str, Any], losses_only: bool = False) -> str:
    """The statistics of a metrics record, whatever the loss named them: losses to 3 decimals,
    the rest to 2; `losses_only` (a narrow terminal) keeps the losses, to 2."""
    parts = []
    for name, value in r.items():
        if name in _NOT_STATS or not isinstance(value, (int, float)):
            continue
        is_loss = name.startswith("loss")
        if losses_only and not is_loss:
            continue
        digits = 2 if losses_only or not is_loss else 3
        digits = 4 if name == "augment_p" else digits  # p moves by 1e-4 every few steps
        parts.append(f"{LABELS.get(name, name)} {value:.{digits}f}")
    rate = r["img_per_s"]
    return "  ".join([*parts, f"{rate:.{1 if 0 < rate < 9.95 else 0}f} img/s"])  # not "0 img/s"


class RunLog:
    """Appends each logged record to metrics.jsonl and shows progress on `console`."""

    def __init__(self, console: Console) -> None:
        self.path: Path | None = None  # set by attach() once the run directory exists
        self.console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._total = 0
        self._start_step = 0
        self._note = ""  # shown after the statistics on the progress line (the last FID)
        self._t0 = time.perf_counter()
        self.started = False  # whether training began (start() was called)
        self._next_line: float | None = None  # when a line by time is due (from the first step)
        self._length_told = False  # whether a long run's length was said
        self._deadline: float | None = None  # --max-time's end (time.monotonic())
        self._sinks: list[Watched] = []

    def attach(self, metrics: Path) -> None:
        """From now on, records go to this metrics.jsonl too."""
        self.path = metrics

    def info(self, message: str) -> None:
        self.console.print(printable(message), highlight=False, markup=False, soft_wrap=True)

    def task(self, description: str, total: int) -> Callable[[int], None]:
        """A progress display for a long job of `total` items; call the result with each advance."""
        self.info(f"{description}: {total} items")
        done = 0
        if self.console.is_terminal:
            bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                           TimeRemainingColumn(), console=self.console, transient=True)
            task_id = bar.add_task(description.split(" into ")[0], total=total)
            bar.start()

            def advance(n: int) -> None:
                nonlocal done
                done += n
                bar.update(task_id, completed=done)
                if done >= total:
                    bar.stop()
            return advance

        next_report = max(total // 10, 1)
        began = last = time.monotonic()

        def advance_plain(n: int) -> None:  # a line every 10%, and at least every LINE_EVERY_S
            nonlocal done, next_report, last
            done += n
            now = time.monotonic()
            if done >= next_report or done >= total or now - last >= LINE_EVERY_S:
                left = ("" if done >= total or not done else
                        f", about {format_duration((now - began) / done * (total - done))} left")
                self.info(f"  {done}/{total} ({100 * done // max(total, 1)}%{left})")
                next_report = done + max(total // 10, 1)
                last = now
        return advance_plain

    def start(self, step: int, total: int, deadline: float | None = None) -> None:
        """Training begins at `step` of `total`; with --max-time, it stops by `deadline` (a
        time.monotonic() value), which caps the ETA."""
        self._total, self._start_step, self._t0 = total, step, time.perf_counter()
        self._deadline = deadline
        self.started = True
        self._next_line = None
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn("step {task.completed}/{task.total}"), BarColumn(bar_width=16),
                _Remaining(self, compact=True), TextColumn("{task.fields[stats]}", markup=False),
                console=self.console, transient=False)
            self._task = self._progress.add_task("train", total=total, completed=step, stats="")
            self._progress.start()

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (compiling) out of the ETA: they will not come again."""
        self._t0 += seconds

    def advance(self, step: int) -> None:
        """A step is done. The first one starts the clock of the lines by time: it may have
        compiled for minutes, and counted from before it a line would come at once."""
        if self._next_line is None:
            self._next_line = time.perf_counter() + FIRST_LINE_S
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=step)

    def line_due(self) -> bool:
        """Whether the user has seen no line (or progress-line update) for long enough that one is
        due: FIRST_LINE_S after the first step, then LINE_EVERY_S after the last."""
        return self._next_line is not None and time.perf_counter() >= self._next_line

    def _append(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            metricsfile.append(self.path, record)

    def record(self, record: dict[str, Any], watched: dict[str, float] | None = None) -> None:
        """A metrics record: to metrics.jsonl, the sinks (with `watched`, numbers for them alone,
        such as the learning rates) and the user."""
        self._append(record)
        self.scalars(record["step"], {**scalar_tags(record), **scalar_tags(watched or {})})
        self.show(record)

    def show(self, record: dict[str, Any]) -> None:
        """A record on the console alone (by time, between the records of metrics.jsonl): the
        progress line's statistics on a terminal, a line otherwise."""
        self._next_line = time.perf_counter() + LINE_EVERY_S
        if self._progress is not None and self._task is not None:
            # keep step, bar and ETA whole on a narrow terminal
            stats = format_record(record, losses_only=self.console.width < 120)
            stats += f"  {self._note}" if self._note else ""
            self._progress.update(self._task, completed=record["step"], stats=stats)
        else:
            until = " (--max-time)" if self._capped(record["step"]) else ""
            self.info(f"step {record['step']}/{self._total}  {format_record(record)}  "
                      f"eta {format_duration(self._eta(record['step']))}{until}")
        self._tell_length(record["step"])

    def _tell_length(self, step: int) -> None:
        """Once the speed is known (FIRST_LINE_S in), a long run's remaining time, in words: an
        8-hour run on a CPU is news the user should have at the start, not from the ETA."""
        if self._length_told or time.perf_counter() - self._t0 < FIRST_LINE_S:
            return
        self._length_told = True
        left = self._eta(step)
        if left >= LONG_RUN_S and not self._capped(step):
            self.info(f"this run has about {format_duration(left)} to go at its speed so far; "
                      "--steps or --max-time shortens it, and `ganctl resume` continues a "
                      "stopped run")

    def note(self, text: str) -> None:
        """A short line part kept on the progress line from now on (e.g. the last FID)."""
        self._note = text

    def event(self, record: dict[str, Any], message: str) -> None:
        """Something that happened to the run (a rollback, an evaluation ...): a metrics.jsonl
        line and a note; an evaluation's scores go to the sinks too."""
        self._append(record)
        self.info(message)
        if record.get("event") == "eval":
            self.scalars(record["step"], eval_scalars(record))

    # --- the sinks (see Sink): a failing one is reported once and left, the run goes on ---

    def watch(self, sinks: list[Sink]) -> None:
        """From now on, scalars and sample grids go to `sinks` too; close() closes them."""
        self._sinks += [Watched(sink, self.info) for sink in sinks]

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if values:
            for w in self._sinks:
                w.send("log scalars", lambda sink: sink.scalars(step, values))

    def image(self, tag: str, image: torch.Tensor | Path, step: int) -> None:
        """A sample grid for the sinks: a (C, H, W) uint8 tensor or a PNG file."""
        for w in self._sinks:
            w.send("log an image", lambda sink: sink.image(tag, image, step))

    def rewind(self, step: int) -> None:
        """Training went back to `step` (a rollback): the steps after it will come again."""
        for w in self._sinks:
            w.send("rewind", lambda sink: sink.rewind(step))

    def _eta(self, step: int) -> float:
        """Seconds until the run ends: at its last step, or at --max-time if that comes first."""
        left = self._budget_left()
        return self._to_last_step(step) if left is None else min(self._to_last_step(step), left)

    def _to_last_step(self, step: int) -> float:
        done = step - self._start_step
        elapsed = time.perf_counter() - self._t0
        return elapsed / done * (self._total - step) if done > 0 else 0.0

    def _budget_left(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    def _capped(self, step: int) -> bool:
        """Whether --max-time, not the last step, ends the run at its present speed."""
        left = self._budget_left()
        return left is not None and left < self._to_last_step(step)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        sinks, self._sinks = self._sinks, []
        for w in sinks:
            w.send("close", lambda sink: sink.close())


# --- sinks: where a run's numbers and grids also go ------------------------------------------------


class _Remaining(TimeRemainingColumn):
    """The progress bar's time left, capped by --max-time when that ends the run first."""

    def __init__(self, log: RunLog, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._log = log

    def render(self, task: Any) -> Any:
        left = self._log._budget_left()
        if left is not None and (task.time_remaining is None or task.time_remaining > left):
            from rich.text import Text  # noqa: PLC0415

            return Text(f"{format_duration(left)} (max-time)", style="progress.remaining")
        return super().render(task)

"""What a run tells its user: metrics.jsonl, a rich progress bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline


def printable(text: str) -> str:
    """Control characters (a terminal escape in a folder name or a checkpoint's metadata) shown
    as \\xNN, never sent to the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


LABELS = {"D_real": "D(x)", "D_fake": "D(G(z))"}  # how the progress line names a statistic
_NOT_STATS = frozenset({"step", "time", "img_per_s"})


class QuietOnClosedPipe(Console):
    """A console that falls silent when its reader goes away (`ganctl train | head`, a closed
    terminal): the run goes on and checkpoints as usual instead of exiting mid-training, which is
    rich's default."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.file.fileno())  # later writes by anyone go nowhere, quietly
        except (OSError, ValueError, AttributeError):
            pass


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
        parts.append(f"{LABELS.get(name, name)} {value:.{digits}f}")
    return "  ".join([*parts, f"{r['img_per_s']:.0f} img/s"])


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

        def advance_plain(n: int) -> None:
            nonlocal done, next_report
            done += n
            if done >= next_report or done >= total:
                self.info(f"  {done}/{total} ({100 * done // max(total, 1)}%)")
                next_report = done + max(total // 10, 1)
        return advance_plain

    def start(self, step: int, total: int) -> None:
        self._total, self._start_step, self._t0 = total, step, time.perf_counter()
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn("step {task.completed}/{task.total}"), BarColumn(bar_width=16),
                TimeRemainingColumn(compact=True), TextColumn("{task.fields[stats]}", markup=False),
                console=self.console, transient=False)
            self._task = self._progress.add_task("train", total=total, completed=step, stats="")
            self._progress.start()

    def advance(self, step: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=step)

    def _append(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def record(self, record: dict[str, Any]) -> None:
        self._append(record)
        if self._progress is not None and self._task is not None:
            # keep step, bar and ETA whole on a narrow terminal
            stats = format_record(record, losses_only=self.console.width < 120)
            stats += f"  {self._note}" if self._note else ""
            self._progress.update(self._task, completed=record["step"], stats=stats)
        else:
            self.info(f"step {record['step']}/{self._total}  {format_record(record)}  "
                      f"eta {format_duration(self._eta(record['step']))}")

    def note(self, text: str) -> None:
        """A short line part kept on the progress line from now on (e.g. the last FID)."""
        self._note = text

    def event(self, record: dict[str, Any], message: str) -> None:
        """Something that happened to the run (a rollback ...): a metrics.jsonl line and a note."""
        self._append(record)
        self.info(message)

    def _eta(self, step: int) -> float:
        done = step - self._start_step
        elapsed = time.perf_counter() - self._t0
        return elapsed / done * (self._total - step) if done > 0 else 0.0

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

"""What a run tells its user: metrics.jsonl, a rich progress bar on a terminal, plain lines
otherwise, and the optional sinks that watch a run (TensorBoard, Weights & Biases)."""

from __future__ import annotations

import importlib
import io
import os
import re
import secrets
import select
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

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
from ganctl.errors import ConfigError, first_line
from ganctl.fsutil import atomic_write, read_regular

if TYPE_CHECKING:
    import numpy as np
    import torch
    from _typeshed import ReadableBuffer

    from ganctl.config import Config

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline


def printable(text: str) -> str:
    """Control characters (a terminal escape in a folder name or a checkpoint's metadata) shown
    as \\xNN, never sent to the terminal; a file name's bytes that are not UTF-8 (surrogates
    to Python) as \\udcNN, which every terminal's encoding can write."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def one_line(text: str) -> str:
    """printable(text) with its line breaks shown as \\n and \\r: an error or a table cell stays
    one line whatever a value quoted in it (a path, a setting) holds."""
    return printable(text.replace("\r", "\\r").replace("\n", "\\n"))


LABELS = {"D_real": "D(x)", "D_fake": "D(G(z))"}  # how the progress line names a statistic
_NOT_STATS = frozenset({"step", "time", "img_per_s"})
# Lines by time as well as by step: whatever --log-every is, a user sees the run is alive (and
# how it goes) soon after it starts and then at least this often. The first step is left out:
# it may compile for minutes, and says so itself.
FIRST_LINE_S = 10.0  # after the first step
LINE_EVERY_S = 30.0  # after the last line
LONG_RUN_S = 30 * 60.0  # a run with this much still to go says so once, FIRST_LINE_S in


def silence(fd: int) -> None:
    """Point the descriptor `fd` at os.devnull: later writes to it, by anyone (Python, rich, C
    code, the interpreter's flush at exit), go nowhere and succeed."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        if devnull != fd:
            os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        if devnull != fd:
            os.close(devnull)


class UserOutput(io.RawIOBase):
    """The file under sys.stdout or sys.stderr once `guard_user_output` has run: a write that
    fails (EPIPE: the reader of a pipe exited; EIO: a closed terminal, a dropped ssh; ENXIO,
    EBADF, a full disk behind a redirect ...) points the descriptor at os.devnull and reports
    success, so the user's output going away never fails a command or changes its exit code.
    Files that ganctl writes (checkpoints, metrics) are opened elsewhere and fail as they should."""

    def __init__(self, fd: int, name: str) -> None:
        super().__init__()
        self._fd = fd
        self.name = name
        self.gone = False  # a write failed: the output went quiet

    def fileno(self) -> int:
        return self._fd

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return not self.gone and os.isatty(self._fd)

    def write(self, b: ReadableBuffer, /) -> int:
        data = memoryview(b).cast("B")
        done = 0
        while done < len(data) and not self.gone:  # all of it, as a buffered writer would
            try:
                n = os.write(self._fd, data[done:])
            except BlockingIOError:  # a non-blocking descriptor that is full: wait for room
                self._wait()
                continue
            except OSError:
                n = 0
            if n == 0:
                self._go_quiet()
            done += n
        return len(data)

    def _wait(self) -> None:
        try:
            select.select([], [self._fd], [])
        except (OSError, ValueError):
            self._go_quiet()

    def _go_quiet(self) -> None:
        self.gone = True
        silence(self._fd)


def guard_user_output() -> None:
    """Replace sys.stdout and sys.stderr with streams over UserOutput (same encoding, errors
    and buffering), so that nothing written to the user's streams (progress, messages, the JSON
    document, the interpreter's flush at exit) can raise. A descriptor closed at start (`>&-`)
    is pointed at os.devnull first, so that no file opened later takes its number."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        if old is not None:
            try:
                if old.fileno() != fd:
                    continue
            except (OSError, ValueError):  # not the process's own stream: leave it alone
                continue
            try:
                old.flush()
            except (OSError, ValueError):
                pass
        try:
            os.fstat(fd)
        except OSError:
            silence(fd)
        raw = UserOutput(fd, f"<{name}>")
        unbuffered = old is None or isinstance(getattr(old, "buffer", None), io.RawIOBase)
        stream = io.TextIOWrapper(
            raw if unbuffered else io.BufferedWriter(raw),
            encoding=getattr(old, "encoding", None) or "utf-8",
            errors=getattr(old, "errors", None) or "backslashreplace",
            newline="\n",
            line_buffering=getattr(old, "line_buffering", name == "stderr"),
            write_through=getattr(old, "write_through", unbuffered))
        setattr(sys, name, stream)


class QuietOnClosedPipe(Console):
    """A console that falls silent when its reader goes away (`ganctl train | head`, a closed
    terminal): the run goes on and checkpoints as usual instead of exiting mid-training, which is
    rich's default. (The `ganctl` command also guards its streams: see guard_user_output.)"""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        try:
            silence(self.file.fileno())
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
        self.started = False  # whether training began (start() was called)
        self._next_line: float | None = None  # when a line by time is due (from the first step)
        self._length_told = False  # whether a long run's length was said
        self._deadline: float | None = None  # --max-time's end (time.monotonic())
        self._sinks: list[_Watched] = []

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
            self.scalars(record["step"], {f"eval/{k}": float(record[k]) for k in EVAL_METRICS
                                          if _is_number(record.get(k))})

    # --- the sinks (see Sink): a failing one is reported once and left, the run goes on ---

    def watch(self, sinks: list[Sink]) -> None:
        """From now on, scalars and sample grids go to `sinks` too; close() closes them."""
        self._sinks += [_Watched(sink, self.info) for sink in sinks]

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

DEFAULT_WANDB_PROJECT = "ganctl"
EVAL_METRICS = ("fid", "kid", "precision", "recall")  # the scores sent to the sinks and plotted
EXTRAS = ("tensorboard", "wandb")  # config switches, each a package and a pip extra of that name
_GROUPS = (("loss_", "loss/"), ("D_", "D/"), ("lr_", "lr/"))  # record key prefix -> tag group


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


class Sink(Protocol):
    """Where a run's scalars and sample grids also go. Steps increase, except after rewind."""

    name: str

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def image(self, tag: str, image: torch.Tensor | Path, step: int) -> None: ...

    def rewind(self, step: int) -> None:
        """Training went back to `step`: what comes next replaces the steps after it."""

    def close(self) -> None: ...


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tag(name: str) -> str:
    if name == "img_per_s":
        return "speed/img_per_s"
    for prefix, group in _GROUPS:
        if name.startswith(prefix):
            rest = name[len(prefix):]
            return group + (rest.upper() if prefix == "lr_" else rest)  # lr_g -> lr/G
    return f"stats/{name}"


def scalar_tags(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics record under grouped tags: loss/D, loss/R1, D/real, D/fake,
    speed/img_per_s, lr/G; any other statistic a loss reports under stats/. Non-finite values
    (text in a record) are left out."""
    return {_tag(k): float(v) for k, v in record.items()
            if k not in ("step", "time") and _is_number(v)}


class _Watched:
    """A sink whose first failure is reported, after which nothing more is sent to it."""

    def __init__(self, sink: Sink, say: Callable[[str], None]) -> None:
        self.sink = sink
        self._say = say
        self.failed = False

    def send(self, what: str, call: Callable[[Sink], None]) -> None:
        if self.failed:
            return
        try:
            call(self.sink)
        except Exception as e:  # a full disk, a network, a library's own bug: watching a run
            self.failed = True  # must never end it
            self._say(f"{self.sink.name}: cannot {what} ({first_line(e) or type(e).__name__}); "
                      f"nothing more goes to {self.sink.name}, training goes on")


def check_sinks(config: Config) -> None:
    """ConfigError (one line, with the pip command) if a sink the config asks for has no
    package: before any file is written, not after hours of training."""
    for extra in EXTRAS:
        if not getattr(config, extra):
            continue
        try:
            importlib.import_module(extra)
        except ImportError:
            raise ConfigError(f"--{extra} needs the {extra} package, which is not installed; "
                              f"install it with: pip install {extra} (ganctl's '{extra}' extra), "
                              f"or train without --{extra}") from None
        except Exception as e:  # a broken install (a mismatched dependency ...)
            raise ConfigError(f"--{extra}: the {extra} package fails to import ({first_line(e)}); "
                              f"reinstall it with: pip install --force-reinstall {extra}") from None


def open_sinks(config: Config, run_dir: Path, step: int, say: Callable[[str], None],
               quiet: bool = False) -> list[Sink]:
    """The sinks `config` asks for, for a run at `step`. One that cannot start (W&B not logged
    in, offline ...) is reported and the run goes on without it. quiet: nothing of theirs on
    the terminal either (W&B's banner and summary), as the run's own output."""
    check_sinks(config)
    openers: dict[str, Callable[[Config, Path, int], Sink]] = {
        "tensorboard": TensorBoardSink,
        "wandb": lambda c, folder, at: WandbSink(c, folder, at, quiet=quiet)}
    sinks = []
    for extra in EXTRAS:
        if getattr(config, extra):
            try:
                sinks.append(openers[extra](config, run_dir, step))
            except Exception as e:  # as for _Watched: a sink never ends the run
                say(f"{extra}: cannot start ({first_line(e) or type(e).__name__}); training "
                    "goes on without it")
    return sinks


def _hwc(image: torch.Tensor | Path) -> np.ndarray:
    """A grid as a (H, W, C) uint8 array, C 1 or 3: from a (C, H, W) tensor, or read from a PNG."""
    if isinstance(image, Path):
        import numpy as np
        from PIL import Image

        with Image.open(image) as im:
            return np.asarray(im.convert("RGB"))
    return image.detach().permute(1, 2, 0).cpu().numpy()


class TensorBoardSink:
    """Scalars and grids as event files in RUN/tensorboard/ (`tensorboard --logdir RUN`)."""

    name = "tensorboard"

    def __init__(self, config: Config, run_dir: Path, step: int) -> None:
        from ganctl import rundir  # noqa: PLC0415 (the run's file names; torch only when training)

        self.folder = run_dir / rundir.TENSORBOARD
        self._writer = self._open(step)

    def _open(self, step: int) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides what earlier writers logged from step + 1 on (a process
        # that stopped past its checkpoint, a rollback, an overwritten run): no step twice
        return SummaryWriter(log_dir=str(self.folder), purge_step=step + 1,
                             flush_secs=int(LINE_EVERY_S))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, global_step=step)

    def image(self, tag: str, image: torch.Tensor | Path, step: int) -> None:
        self._writer.add_image(tag, _hwc(image), global_step=step, dataformats="HWC")

    def rewind(self, step: int) -> None:
        self._writer.close()
        self._writer = self._open(step)

    def close(self) -> None:
        self._writer.close()


def wandb_id(run_dir: Path) -> str:
    """The run's W&B id, made at its first W&B start and kept in the run, so that a resumed run
    (even moved to another folder) continues the same W&B run."""
    from ganctl import rundir  # noqa: PLC0415

    path = run_dir / rundir.WANDB_ID
    try:
        text = read_regular(path, 256).decode("ascii", "replace").strip()
        if re.fullmatch(r"[0-9a-z]{8,64}", text):
            return text
    except OSError:  # absent (or not a file ours): a new id
        pass
    new = secrets.token_hex(8)
    atomic_write(path, f"{new}\n".encode())
    return new


class WandbSink:
    """Scalars and grids to Weights & Biases: project config.wandb_project (or ganctl), the run
    named after its folder, its config as W&B's.

    W&B takes a run's steps in increasing order only: a row it already holds cannot be replaced,
    a step below its last is dropped with a warning on the user's terminal, and one equal to it is
    merged into that row. So no step is sent twice: a resumed run sends from the step W&B asks for
    next (online, the one after those it holds; offline, `wandb sync` joins the processes' logs
    in order), and after a rollback the replayed steps W&B already has are left out."""

    name = "wandb"

    def __init__(self, config: Config, run_dir: Path, step: int, quiet: bool = False) -> None:
        import wandb

        self._wandb = wandb
        run_dir = run_dir.resolve()
        self._run = wandb.init(
            # the run's folder holds W&B's files too, unless the user's WANDB_DIR says where
            project=config.wandb_project or DEFAULT_WANDB_PROJECT,
            dir=None if os.environ.get("WANDB_DIR") else str(run_dir),
            name=run_dir.name, id=wandb_id(run_dir), resume="allow",
            # ganctl guards its own stdout and stderr (guard_user_output, --json's one document):
            # W&B's console capture would wrap or redirect them again
            settings=wandb.Settings(console="off", silent=quiet))
        # a resumed run may change what resume may (steps, device ...): W&B refuses a changed
        # value unless told
        self._run.config.update(config.to_dict(), allow_val_change=True)
        self._next = int(self._run.starting_step)  # steps below it are W&B's already
        self._last = self._next - 1  # the last step sent

    def _log(self, values: dict[str, Any], step: int) -> None:
        if step >= self._next:  # a step's scalars and then its grid: one row
            self._run.log(values, step=step)
            self._last = max(self._last, step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._log(values, step)

    def image(self, tag: str, image: torch.Tensor | Path, step: int) -> None:
        if step >= self._next:  # not read from its PNG for nothing
            hwc = _hwc(image)
            self._log({tag: self._wandb.Image(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc)}, step)

    def rewind(self, step: int) -> None:
        """The replay up to the last step sent is left out: W&B keeps the first pass there, and
        shows the replay from where the first pass ended."""
        self._next = self._last + 1

    def close(self) -> None:
        self._run.finish()

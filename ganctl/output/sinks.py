"""The optional sinks that watch a run: TensorBoard and Weights & Biases (check_sinks before a
run starts, open_sinks when it does)."""

from __future__ import annotations

import importlib
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

from ganctl.errors import ConfigError, first_line
from ganctl.fsutil import atomic_write, read_regular
from ganctl.metrics import plotted

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ganctl.config import Config


DEFAULT_WANDB_PROJECT = "ganctl"
EXTRAS = ("tensorboard", "wandb")  # config switches, each a package and a pip extra of that name
FLUSH_S = 30  # TensorBoard writes its events to disk at least this often
# record key prefix -> tag group (augment_p: augment/p)
_GROUPS = (("loss_", "loss/"), ("D_", "D/"), ("lr_", "lr/"), ("augment_", "augment/"))


class Sink(Protocol):
    """Where a run's scalars and sample grids also go. Steps increase, except after rewind."""

    name: str

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def image(self, tag: str, image: torch.Tensor | Path, step: int) -> None: ...

    def rewind(self, step: int) -> None:
        """Training went back to `step`: what comes next replaces the steps after it."""

    def close(self) -> None: ...


def is_number(value: Any) -> TypeGuard[int | float]:
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
    speed/img_per_s, lr/G, augment/p; any other statistic a loss reports under stats/. Non-finite values
    (text in a record) are left out."""
    return {_tag(k): float(v) for k, v in record.items()
            if k not in ("step", "time") and is_number(v)}


def eval_scalars(record: dict[str, Any]) -> dict[str, float]:
    """An evaluation record's scores that `ganctl plot` draws (the metric registry's plotted
    columns), as eval/<key>; one not a finite number (text in a record) is left out."""
    return {f"eval/{key}": float(record[key]) for key in plotted() if is_number(record.get(key))}


class Watched:
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
            except Exception as e:  # as for Watched: a sink never ends the run
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
                             flush_secs=FLUSH_S)

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

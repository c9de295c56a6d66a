"""The Python surface of ganctl: train a run, load its generator, sample and score it.

    import ganctl
    run = ganctl.train(dataset="shapes", steps=1500, out="runs/shapes")
    G = ganctl.load("runs/shapes")              # or a checkpoint file, "latest", "best"
    G.grid(n=64).save("grid.png")               # the 8x8 grid `ganctl sample -n 64` writes
    scores = ganctl.evaluate("runs/shapes", num=10000)

These are the functions the command line runs (session, rundir, sample, evaluate), with the same
files, checks and messages. Failures raise ganctl.errors exceptions (GanctlError and its
subclasses, one-line messages); nothing here exits the interpreter.
"""

from __future__ import annotations

import functools
import numbers
import operator
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image
from rich.console import Console
from torch import nn

from ganctl import resuming, rundir, session
from ganctl import settings as layers  # (train takes **settings)
from ganctl.checkpoint import Header
from ganctl.config import BOUNDS, FIELD_NAMES, Config
from ganctl.configfile import load_config_file
from ganctl.device import resolve_device
from ganctl.engine.loop import RunResult
from ganctl.errors import (
    ConfigError,
    DeviceError,
    GanctlError,
    RunError,
    Stopped,
    did_you_mean,
    os_error_message,
    shorten,
)
from ganctl.imagefiles import GRID_PADDING, GridShape, make_grid, to_pil
from ganctl.metrics import names_help, parse_metrics
from ganctl.models.base import num_classes
from ganctl.output.console import QuietOnClosedPipe
from ganctl.output.progress import RunLog
from ganctl.sample import (
    GENERATE_BATCH,
    check_truncation,
    generate,
    labels_for_seeds,
    load_generator,
    seed_latents,
)
from ganctl.scoring import API_ARGUMENTS, evaluate_checkpoint
from ganctl.seeds import MAX_SEEDS, Seeds, brief_repr, seed_list, whole

PathLike = str | os.PathLike[str]
MAX_PADDING = 4096  # pixels between a grid's images (beyond, the grid is too large anyway)
DEFAULT_N = 64  # images when neither seeds nor n is given: `ganctl sample`'s default
MAX_BATCH = int(BOUNDS["batch_size"][1])  # images per forward pass, as `ganctl sample --batch-size`
MAX_SAMPLE_BYTES = 1 << 32  # uint8 pixels one sample() call returns (4 GiB): more, drawn in parts
DEVICES = "auto, cpu, cuda, cuda:K or mps"
# flags of `ganctl train` that are not settings of a run, and what a Python caller does instead
COMMAND_LINE_ONLY = {
    "gpus": "several processes are started by the command line (ganctl train --gpus N, or "
            "torchrun -m ganctl train); train() trains in this process",
    "print_config": "the resolved settings are ganctl.settings.resolve_config(settings)",
    "list_presets": "the presets are ganctl.presets.PRESETS",
    "json": "train() returns a Run; its .result is what --json prints",
    "debug": "errors are raised as they are, tracebacks included"}
# train()'s own arguments; every other keyword is a config key (ganctl.config.Config's fields)
TRAIN_ARGS = ("out", "config", "max_time", "resume", "overwrite", "download", "quiet")


F = TypeVar("F", bound=Callable[..., Any])


def _ganctl_errors(fn: F) -> F:
    """A public function whose failures are all ganctl's own errors: what the operating system
    refused (a name too long, a full disk, permissions) and memory running out raise GanctlError
    with the command line's one-line message, not OSError or MemoryError from deep inside."""
    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GanctlError:
            raise
        except OSError as e:
            raise GanctlError(os_error_message(e)) from e
        except MemoryError as e:
            raise GanctlError("out of memory: the checkpoint, model, images or dataset are too "
                              "large for this machine") from e
    return checked  # type: ignore[return-value]


# --- train ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """Where train() left a run: its directory, the step reached of its total, the last
    checkpoint and sample grid, the last logged metrics; `stopped` is "max-time" when max_time
    ran out first (train again with resume=True to continue). `result` holds everything
    `ganctl train --json` prints (device, seconds, batch size, precision ...)."""

    run_dir: Path
    step: int
    steps: int
    checkpoint: Path | None
    samples: Path | None
    metrics: dict[str, Any] | None
    stopped: str | None
    result: dict[str, Any]

    @classmethod
    def of(cls, result: RunResult) -> Run:
        def path(p: str | None) -> Path | None:
            return Path(p) if p is not None else None

        return cls(Path(result.run_dir), result.step, result.steps, path(result.checkpoint),
                   path(result.samples), result.metrics, result.stopped, result.to_dict())

    @_ganctl_errors
    def load(self, device: str = "auto") -> Generator:
        """The generator of this run's last checkpoint (see ganctl.load).

        Example: G = ganctl.train(steps=300).load(); G.grid(n=16)
        """
        return load(self.checkpoint or self.run_dir, device)


@_ganctl_errors
def train(*, out: PathLike | None = None, config: PathLike | None = None,
          max_time: str | None = None, resume: bool = False, overwrite: bool = False,
          download: bool = True, quiet: bool = False, **settings: Any) -> Run:
    """Train a GAN as `ganctl train` does; returns the Run.

    `settings` are config keys, as the command line's flags with underscores (batch_size=32 for
    --batch-size 32; the fields of ganctl.config.Config): dataset, preset, arch, loss, steps,
    device, ... A setting of None counts as not given; numpy's numbers count as Python's.
    They are layered as on the command line: defaults < the dataset's preset < preset= < the
    config= file (TOML or JSON) < settings.
    out: the run directory (default: the next ./runs/NNNN-<dataset>-<arch>). resume=True
    continues the run in `out` if there is one (settings it was started with may be repeated,
    not changed), overwrite=True replaces it. max_time ("3h30m", "90m") stops with a
    checkpoint in time, counted from this call. Progress goes to stderr; quiet=True: nothing.

    Ctrl-C (or a notebook's interrupt) finishes the step under way, writes a checkpoint and
    raises ganctl.errors.Stopped, whose .result says where the run stands; train(out=...,
    resume=True) continues it. Called from another thread than the main one, train() cannot
    catch signals and leaves them to their handlers.

    Example: run = ganctl.train(dataset="mnist", steps=2000, batch_size=64, out="runs/m")
    """
    given = _settings(settings)
    for name, flag in (("resume", resume), ("overwrite", overwrite), ("download", download),
                       ("quiet", quiet)):
        _flag(name, flag)
    _path("out", out, "a run directory's path")
    _path("config", config, "the path of a TOML or JSON config file")
    if max_time is not None and not isinstance(max_time, str):
        raise ConfigError(f"max_time must be a duration like '3h30m', '90m' or '45s' (a string), "
                          f"got {_got(max_time)}")
    if resume and overwrite:
        raise ConfigError("resume=True and overwrite=True exclude each other: continue the run "
                          "in out, or replace it")
    if (resume or overwrite) and out is None:
        raise ConfigError("resume=True and overwrite=True need out=: the run directory to "
                          "continue or replace")
    if resume and given.get("init_from"):
        raise ConfigError("init_from starts a new run from a checkpoint's weights; resume=True "
                          "continues a run: use one")
    values = {**(load_config_file(Path(config)) if config is not None else {}), **given}
    deadline = layers.deadline_from(max_time)
    try:
        result = run_training(values, Path(out) if out is not None else None,
                              RunLog(_console(quiet)), resume=resume, overwrite=overwrite,
                              download=download, deadline=deadline)
    except Stopped as e:
        raise _resumable(e) from None
    except RunError as e:
        if out is None or not rundir.is_run_dir(Path(out)) or "already holds a run" not in str(e):
            raise
        raise RunError(f"{out} already holds a run; continue it with ganctl.train(out={str(out)!r}, "
                       "resume=True), replace it with overwrite=True, or choose another out=") from None
    return Run.of(result)


def run_training(values: dict[str, Any], out: Path | None, log: RunLog, *, resume: bool = False,
                 overwrite: bool = False, download: bool = True, deadline: float | None = None
                 ) -> RunResult:
    """What `ganctl train` and train() do with the settings gathered (a config file's under the
    given ones): continue the run in `out` (resume, where it holds one), or resolve the config,
    say which settings do nothing, and start a new run."""
    if resume and out is not None and rundir.is_run_dir(out):
        return resuming.continue_run(out, values, log, download, deadline)
    resolved = layers.resolve_config(values)
    for note in layers.option_notes(values, resolved):
        log.info(note)
    return session.train(resolved, out, log, download, deadline, overwrite)


def _settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The config keys given, as the plain values a config file holds (see _plain); an unknown
    one is a ConfigError that names the closest known name."""
    for key in settings:
        if key in COMMAND_LINE_ONLY:
            raise ConfigError(f"train() has no {key}=: {COMMAND_LINE_ONLY[key]}")
        if key not in FIELD_NAMES:
            hint = did_you_mean(key, FIELD_NAMES + TRAIN_ARGS)
            raise ConfigError(f"train() got an unknown setting {shorten(key)}{hint}; settings are the "
                              "config keys, the command line's flags with underscores "
                              "(--batch-size is batch_size): see ganctl.config.Config")
    return {k: _plain(v) for k, v in settings.items() if v is not None}


def _plain(value: Any) -> Any:
    """A setting as TOML would give it: a path as its string, numpy's integers as int and its
    floats as float (a notebook's np.int64(64) is a batch size); anything else as it is, for the
    config's own checks to judge."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (bool, int, float, str)):
        return value
    number = whole(value)
    if number is not None:
        return number
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:  # Fraction(10**400): left to the config's "a float can hold"
            return value
    return value


def _resumable(e: Stopped) -> Stopped:
    """A stopped run's error, saying how to continue it from Python too."""
    where = (e.result or {}).get("run_dir")
    if where is None:
        return e
    return Stopped(e.exit_code - 128, f"{e}; from Python: ganctl.train(out={where!r}, resume=True)",
                   e.result)


def _flag(name: str, value: object) -> None:
    """True or False, nothing else: quiet="no" would be true, download=None false."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {_got(value)}")


def _path(name: str, value: object, what: str) -> None:
    """A path given as a str or an os.PathLike of str (pathlib.Path), or None; bytes are not
    (os.fsdecode decodes them)."""
    if value is None:
        return
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if isinstance(text, str):
        if "\x00" in text:
            raise ConfigError(f"{name} {shorten(text)} holds a NUL character, which no path can")
        return
    hint = "; decode it with os.fsdecode" if isinstance(text, bytes) else ""
    raise ConfigError(f"{name} must be {what} (a str or pathlib.Path), got "
                      f"{_got(value)}{hint}")


def _got(value: object) -> str:
    """A wrong value for a message: its type and a short repr ("int 3", "bytes b'r'", "None")."""
    return "None" if value is None else f"{type(value).__name__} {brief_repr(value)}"


def _device(device: object) -> str:
    """A device as resolve_device takes it: its name, or a torch.device's."""
    if isinstance(device, torch.device):
        return str(device)
    if not isinstance(device, str):
        raise DeviceError(f"unknown device {_got(device)}; use {DEVICES} (a str or a torch.device)")
    return device


def _console(quiet: bool) -> Console:
    # stderr, like the command line's progress: stdout stays the caller's
    return QuietOnClosedPipe(stderr=True, highlight=False, quiet=quiet)


# --- load and sample ------------------------------------------------------------------------------

class Generator:
    """A checkpoint's EMA generator (G_ema, in eval mode), rebuilt from the file alone.

    `config` is the run's Config, `step` the checkpoint's step, `checkpoint` its path, `device`
    where G runs, `G` the torch module. Images come back as uint8 on the CPU, one latent per
    seed, so an image depends on its seed alone (not on the batch it was made in).
    Made by ganctl.load; example: G = ganctl.load("runs/m"); x = G.sample(seeds="0-15").
    """

    def __init__(self, G: nn.Module, config: Config, step: int, checkpoint: Path,
                 device: torch.device) -> None:
        self.G, self.config, self.step = G, config, step
        self.checkpoint, self.device = checkpoint, device

    def __repr__(self) -> str:
        c = self.config
        return (f"Generator({c.arch} {c.resolution}x{c.resolution}x{c.channels}, step {self.step}, "
                f"{str(self.checkpoint)!r}, device {self.device})")

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def num_classes(self) -> int:
        """Classes a conditional model draws (0: unconditional)."""
        return num_classes(self.config)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names class_ may name (empty for an unconditional model, even one trained
        on labelled data: config.classes holds the data's)."""
        return self.config.classes if self.num_classes else ()

    @_ganctl_errors
    def sample(self, seeds: Seeds | None = None, *, n: int | None = None,
               truncation: float | None = None, class_: int | str | None = None,
               batch_size: int = GENERATE_BATCH) -> torch.Tensor:
        """Images as a uint8 tensor (N, C, H, W) on the CPU, one per seed.

        seeds: an int (one image), a range, a list, or a string like "0-63,100"; n=16 is
        seeds range(16); neither gives seeds 0-63. truncation psi draws z from the standard
        normal truncated to [-psi, psi] (None: untruncated, the images `ganctl sample` makes).
        Without a mapping network z itself is truncated: lower psi trades variety for typical
        images, psi = 0 gives z = 0, one image for every seed (per class), and from about 8.3
        up nothing is cut (any larger psi gives the same images); a generator with one
        truncates its styles toward w_avg instead (w_avg + psi (w - w_avg)). class_: for
        a conditional model, an index or a name of `classes` for every image (None: seed mod the
        number of classes, every class in turn); an unconditional model takes none. batch_size:
        images per forward pass (memory, not the images), 1 to 65,536. Integers may be numpy's.
        One call draws at most 100,000 images and 4 GiB of pixels: draw more in parts. Every
        argument is checked before anything is generated (a ConfigError, as `ganctl sample`'s).

        Example: x = G.sample(seeds=range(16), truncation=0.7, class_="circle")
        """
        chosen = self._seeds(seeds, n, truncation, batch_size)
        return self._draw(chosen, truncation, class_, batch_size)

    def _seeds(self, seeds: Seeds | None, n: int | None, truncation: float | None,
               batch_size: int) -> list[int]:
        """The seeds asked for, once every argument but the class is checked: cheap checks first,
        so a mistake costs no generating."""
        chosen = _seeds(seeds, n)
        _whole("batch_size", batch_size, 1, MAX_BATCH)
        if truncation is not None:
            check_truncation(truncation)
        c = self.config
        size = len(chosen) * c.channels * c.resolution**2
        if size > MAX_SAMPLE_BYTES:  # before an allocation that fails, or swaps, after minutes
            raise ConfigError(f"{len(chosen):,} images at {c.resolution}x{c.resolution}x{c.channels} "
                              f"are {size / 1e9:.1f} GB of pixels, more than one call returns (at most "
                              f"{MAX_SAMPLE_BYTES / 1e9:.1f} GB); ask for fewer seeds a call (an image "
                              "depends on its seed alone)")
        return chosen

    def _draw(self, chosen: list[int], truncation: float | None, class_: int | str | None,
              batch_size: int) -> torch.Tensor:
        z = seed_latents(self.G, chosen, self.z_dim, truncation)
        c = labels_for_seeds(chosen, self.config, class_)
        return generate(self.G, z, self.device, c, operator.index(batch_size), truncation)

    @_ganctl_errors
    def images(self, seeds: Seeds | None = None, *, n: int | None = None,
               truncation: float | None = None, class_: int | str | None = None,
               batch_size: int = GENERATE_BATCH) -> list[Image.Image]:
        """The images of sample() as PIL images (mode "L" for one channel, "RGB" for three).

        Example: for seed, image in zip(range(4), G.images(n=4)): image.save(f"{seed}.png")
        """
        x = self.sample(seeds, n=n, truncation=truncation, class_=class_, batch_size=batch_size)
        return [to_pil(image.permute(1, 2, 0)) for image in x]  # (H, W, C)

    @_ganctl_errors
    def grid(self, seeds: Seeds | None = None, *, n: int | None = None, nrow: int | None = None,
             padding: int = GRID_PADDING, truncation: float | None = None,
             class_: int | str | None = None, batch_size: int = GENERATE_BATCH) -> Image.Image:
        """The images of sample() in one PIL image: `nrow` per row (default ceil(sqrt(N))),
        `padding` black pixels between and around them; G.grid(n=64) is the grid
        `ganctl sample -n 64` writes. A grid of more than 1 GiB of pixels is refused, before
        anything is generated.

        Example: G.grid(seeds="0-15", nrow=8).save("grid.png")
        """
        rows = None if nrow is None else _whole("nrow", nrow, 1, MAX_SEEDS)
        gap = _whole("padding", padding, 0, MAX_PADDING)
        chosen = self._seeds(seeds, n, truncation, batch_size)
        c = self.config
        shape = GridShape.of(len(chosen), c.channels, c.resolution, c.resolution, gap, rows)
        if (problem := shape.too_big()) is not None:  # before generating, and before torch's
            raise ConfigError(f"{problem}; draw fewer images or less padding, or take images()")
        return to_pil(make_grid(self._draw(chosen, truncation, class_, batch_size), gap, rows))


def _seeds(seeds: Seeds | None, n: int | None) -> list[int]:
    if seeds is not None and n is not None:
        raise ConfigError("give seeds or n, not both (n=16 is seeds=range(16))")
    if n is None:
        return seed_list(range(DEFAULT_N) if seeds is None else seeds)
    return seed_list(range(_whole("n", n, 1, MAX_SEEDS, " (the images, seeds 0..n-1)")))


@_ganctl_errors
def load(target: PathLike | None = None, device: str = "auto") -> Generator:
    """The EMA generator of a checkpoint, as `ganctl sample --ckpt` finds it.

    target: a run directory (its newest checkpoint that verifies), a checkpoint file, "latest"
    or "best" (the newest run's under ./runs, or GANCTL_RUNS; RUN/checkpoints/best for a run's),
    or None (the newest run's newest checkpoint). The file is verified against its checksum and
    nothing in it is run (no pickle). Damaged checkpoints passed over are warned about.
    device: auto, cpu, cuda, cuda:K or mps.

    Example: G = ganctl.load("runs/m"); G.grid(n=64).save("grid.png")
    """
    header = _locate(target)
    dev = resolve_device(_device(device))
    loaded = load_generator(header, dev)
    return Generator(loaded.G, loaded.config, loaded.header.step, header.path, dev)


def _locate(target: PathLike | None) -> Header:
    """rundir.locate, each damaged checkpoint it passed over a warning at the caller's line."""
    _path("target", target, "a run directory, a checkpoint path, 'latest' or 'best'")
    passed: list[str] = []
    header = rundir.locate(None if target is None else os.fspath(target), passed.append)
    for message in passed:
        warnings.warn(message, stacklevel=4)  # at the line calling load() or evaluate()
    return header


# --- evaluate -------------------------------------------------------------------------------------

@_ganctl_errors
def evaluate(target: PathLike | None = None, *, metrics: str | Sequence[str] = ("fid", "kid"),
             num: int = 10000, num_real: int | None = None, dataset: str | None = None,
             split: str | None = None, data_dir: PathLike | None = None, device: str = "auto",
             inception: PathLike | None = None, download: bool = True, quiet: bool = False
             ) -> dict[str, Any]:
    """Score a checkpoint's G_ema as `ganctl eval --json` does; returns its JSON document as a
    dict (scores under "metrics", with the image counts, seconds and protocol), and appends the
    scores to the run's metrics.jsonl.

    target as in load(). metrics: "fid", "kid", "pr" (a list, or "fid,kid"). num fakes (seeds
    0..num-1) against num_real reals (None: all) of the run's own data, or of `dataset` (its
    `split`). inception: the feature network's file (default: env GANCTL_INCEPTION, the cache,
    else downloaded unless download=False). Progress goes to stderr; quiet=True: nothing.

    Example: ganctl.evaluate("runs/m", num=10000)["metrics"]["fid"]
    """
    names = parse_metrics(_metrics_text(metrics))
    num = _whole("num", num, *BOUNDS["eval_num"])
    if num_real is not None:
        num_real = _whole("num_real", num_real, 2, BOUNDS["eval_num_real"][1])
    for name, value, what in (("dataset", dataset, "a dataset's name or a folder or .zip of images"),
                              ("data_dir", data_dir, "the folder of the named datasets"),
                              ("inception", inception, "the feature network's file")):
        _path(name, value, what)
    if split is not None and not isinstance(split, str):
        raise ConfigError(f"split must be a split's name like 'train' or 'test', got "
                          f"{_got(split)}")
    _flag("download", download)
    _flag("quiet", quiet)
    dev = _device(device)
    header = _locate(target)
    overrides = {k: os.fspath(v) for k, v in (("dataset", dataset), ("split", split),
                                               ("data_dir", data_dir)) if v is not None}
    if dataset is not None and split is None:
        overrides["split"] = ""  # another dataset: its own default split
    return evaluate_checkpoint(header, resolve_device(dev), names, num, num_real, overrides,
                               None if inception is None else os.fspath(inception), download,
                               RunLog(_console(quiet)), API_ARGUMENTS)


def _metrics_text(metrics: object) -> str:
    """metrics as `ganctl eval --metrics` takes them: "fid,kid", or the names in a list."""
    if isinstance(metrics, str):
        return metrics
    choose = f"choose from {names_help()}"
    if not isinstance(metrics, (list, tuple)):
        raise ConfigError(f"metrics must be names like 'fid,kid' or ['fid', 'kid'], got "
                          f"{_got(metrics)}; {choose}")
    for name in metrics:
        if not isinstance(name, str):
            raise ConfigError(f"metric {brief_repr(name)} is not a metric's name; {choose}")
    return ",".join(metrics)


def _whole(name: str, value: Any, low: float, high: float | None = None, note: str = "") -> int:
    """value as an int (numpy's integers too, not bools or 2.0) from low to high, or a
    ConfigError in the words of `ganctl`'s range checks."""
    number = whole(value)
    if number is None or number < low or (high is not None and number > high):
        span = f"from {int(low):,}" + (f" to {int(high):,}" if high is not None else "")
        raise ConfigError(f"{name} must be a whole number {span}{note}, got {brief_repr(value)}")
    return number

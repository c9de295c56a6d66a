"""A checkpoint's generator into files, as `ganctl sample` and `ganctl export` write them: one
image or grid (sample_to_file), one file per seed (export_images), a walk through the latents
(interpolate), a model file that runs without ganctl (export). Every argument and the output
path are checked before the checkpoint is read; `notes` (default: warnings) hears of damaged
checkpoints passed over and of the checkpoint chosen when `target` is None."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ganctl.api.checks import (
    Notes,
    PathLike,
    callback,
    check_noise_mode,
    device_name,
    flag,
    ganctl_errors,
    locate,
    path,
    whole_number,
)
from ganctl.api.generator import DEFAULT_N, MAX_BATCH, chosen_seeds
from ganctl.api.outputs import check_out, export_target
from ganctl.bulk import FORMATS as BULK_FORMATS
from ganctl.checkpoint import Header
from ganctl.device import resolve_device
from ganctl.errors import ConfigError, UsageError
from ganctl.imagefiles import IMAGE_FORMATS
from ganctl.interpolate import MAX_SCALE  # (a grid's upscaling, as a walk's)
from ganctl.models.generator import current_noise_mode
from ganctl.sample import (
    GENERATE_BATCH,
    LoadedGenerator,
    check_nvlabs_seeds,
    check_truncation,
    load_generator,
    parse_class,
)
from ganctl.seeds import MAX_SEEDS, Seeds, seed_list, whole

MAX_GRID = 4096  # images in one grid file; more go to export_images (--out-dir)
MAX_EXPORT = 10_000_000  # images of one export to files (`ganctl sample -n` at most)
EVERY_CLASS_N = 8  # seeds a row of a class="all" grid holds when none are given


def _open(target: PathLike | None, device: object, ema: bool, notes: Notes | None,
          noise_mode: str = "const", nvlabs_seeds: bool = False
          ) -> tuple[LoadedGenerator, torch.device]:
    """The checkpoint's generator (G_ema, or G with ema=False) on the device, drawing per-pixel
    noise (a generator that takes it) as noise_mode says, its seeds' latents NVlabs' with
    nvlabs_seeds."""
    flag("ema", ema)
    check_noise_mode(noise_mode)
    header = locate(target, notes)
    dev = resolve_device(device_name(device))  # (a device missing is said before the choice)
    _say_chosen(target, header, notes)
    loaded = load_generator(header, dev, ema, noise_mode, nvlabs_seeds)
    if noise_mode != "const" and notes is not None and current_noise_mode(loaded.G) is None:
        notes(f"--noise-mode is a StyleGAN2's per-pixel noise; {loaded.config.arch}'s G takes "
              "none, so it does nothing")
    return loaded, dev


def _say_chosen(target: PathLike | None, header: Header, notes: Notes | None) -> None:
    """With no target, `notes` hears which checkpoint was chosen."""
    if target is None and notes is not None:
        notes(f"using newest checkpoint {header.path}")


def _image_out(out: PathLike) -> Path:
    """OUT of one image or grid: named for its format (.png, .jpg, .jpeg, .webp), and a file
    that may be written (check_out)."""
    path("out", out, "a file's path", required=True)
    text = os.fspath(out)
    name = Path(text).name
    hidden = name.startswith(".") and not Path(text).suffix  # check_out names that mistake
    if not text.endswith(("/", os.sep)) and not hidden and \
            Path(text).suffix.lower() not in IMAGE_FORMATS:
        raise UsageError(f"{name}: the image's name must end in .png, .jpg, .jpeg or .webp (its "
                         "format)", "OUT")
    return check_out(out)


def _int(value: int) -> int:
    """numpy's and torch's integers as int; anything else as it is, for the checks to judge."""
    number = whole(value)
    return value if number is None else number


def _class(loaded: LoadedGenerator, class_: int | str | None) -> int | str | None:
    """A class as `--class` takes it: a name, an index, or (grids) all; a string of digits that
    names no class is an index."""
    return parse_class(class_, loaded.config.classes) if isinstance(class_, str) else class_


def _common(truncation: float | None, batch_size: int, nvlabs_seeds: bool = False,
            seeds: Sequence[int] = ()) -> float | None:
    whole_number("batch_size", batch_size, 1, MAX_BATCH)
    flag("nvlabs_seeds", nvlabs_seeds)
    if nvlabs_seeds:
        check_nvlabs_seeds(seeds)
    return None if truncation is None else check_truncation(truncation)


@ganctl_errors
def sample_to_file(target: PathLike | None, out: PathLike, seeds: Seeds | None = None, *,
                   n: int | None = None, truncation: float | None = None,
                   class_: int | str | None = None, nrow: int | None = None, scale: int = 1,
                   batch_size: int = GENERATE_BATCH, device: str = "auto", ema: bool = True,
                   notes: Notes | None = None, noise_mode: str = "const",
                   nvlabs_seeds: bool = False) -> dict:
    """`ganctl sample OUT`: the seeds' images as one .png, .jpg or .webp file: a grid of
    `nrow` a row (default square; class_="all": a row per class), or one image alone; `scale`
    upscales (nearest neighbour); noise_mode: a StyleGAN2's per-pixel noise (const, random,
    none); nvlabs_seeds: seeds give the latents NVlabs' generate.py draws (a network imported
    from their .pkl makes their images). Returns what `--json` prints.

    Example: ganctl.api.sample_to_file("runs/m", "grid.png", n=64)
    """
    out = _image_out(out)
    chosen = chosen_seeds(seeds, n, default=EVERY_CLASS_N if class_ == "all" else DEFAULT_N)
    if len(chosen) > MAX_GRID:
        raise ConfigError(f"{len(chosen)} images are too many for one file (at most {MAX_GRID}); "
                          "write one file per image with --out-dir DIR")
    rows = 0 if nrow is None else whole_number("nrow", nrow, 1, MAX_SEEDS)
    whole_number("scale", scale, 1, MAX_SCALE)
    truncation = _common(truncation, batch_size, nvlabs_seeds, chosen)
    from ganctl.sample import sample_file

    loaded, dev = _open(target, device, ema, notes, noise_mode, nvlabs_seeds)
    return sample_file(loaded, out, chosen, dev, truncation=truncation,
                       class_=_class(loaded, class_), nrow=rows, scale=scale, batch_size=batch_size)


@ganctl_errors
def export_images(target: PathLike | None, out_dir: PathLike, seeds: Seeds | None = None, *,
                  n: int | None = None, format: str = "png", truncation: float | None = None,
                  class_: int | str | None = None, batch_size: int = GENERATE_BATCH,
                  device: str = "auto", ema: bool = True, notes: Notes | None = None,
                  progress: Callable[[int], None] | None = None,
                  start: Callable[[int], None] | None = None, noise_mode: str = "const",
                  nvlabs_seeds: bool = False) -> dict:
    """`ganctl sample --out-dir`: one file per seed (png, jpg, webp or npz shards), named by
    seed (class folders for a conditional model), with labels.csv and manifest.json; a rerun
    finishes an interrupted export and keeps what is there (see ganctl.bulk). `start(count)`
    and `progress(k)` report how far it got. Returns what `--json` prints.

    Example: ganctl.api.export_images("runs/m", "out/", n=50000)
    """
    path("out_dir", out_dir, "a folder's path", required=True)
    callback("progress", progress)
    callback("start", start)
    if not isinstance(format, str) or format.lower() not in (*BULK_FORMATS, "jpeg"):
        raise UsageError(f"{format!r} is not one of {', '.join(BULK_FORMATS)}", "--format")
    chosen = chosen_seeds(seeds, n, limit=MAX_EXPORT)
    truncation = _common(truncation, batch_size, nvlabs_seeds, chosen)
    from ganctl.bulk import export_images as export

    loaded, dev = _open(target, device, ema, notes, noise_mode, nvlabs_seeds)
    return export(loaded, chosen, Path(out_dir), format, truncation=truncation,
                  class_=_class(loaded, class_), batch_size=batch_size, device=dev,
                  progress=progress, start=start)


@ganctl_errors
def interpolate(target: PathLike | None, out: PathLike, seeds: Seeds | None = None, *,
                n: int | None = None, frames: int = 60, fps: int = 20, loop: bool = True,
                scale: int = 1, truncation: float | None = None, class_: int | str | None = None,
                batch_size: int = GENERATE_BATCH, device: str = "auto", ema: bool = True,
                notes: Notes | None = None, noise_mode: str = "const",
                nvlabs_seeds: bool = False) -> dict:
    """`ganctl sample --interpolate`: a walk through the seeds' latents (slerp in z, lerp in w
    for a generator with a mapping network) as OUT.gif, OUT.mp4 (needs ffmpeg) or OUT.png (a
    row per pair of seeds); default seeds 0-3. Returns what `--json` prints.

    Example: ganctl.api.interpolate("runs/m", "walk.gif", seeds="0-7", frames=120)
    """
    from ganctl.interpolate import check_request
    from ganctl.interpolate import interpolate as walk

    out = check_out(out)
    flag("loop", loop)
    chosen = chosen_seeds(seeds, n, default=4)
    frames, fps, scale = (_int(value) for value in (frames, fps, scale))
    check_request(chosen, frames, fps, scale, out, loop)
    truncation = _common(truncation, batch_size, nvlabs_seeds, chosen)
    loaded, dev = _open(target, device, ema, notes, noise_mode, nvlabs_seeds)
    result = walk(loaded, chosen, out, frames, truncation=truncation,
                  class_=_class(loaded, class_), device=dev, fps=fps, scale=scale, loop=loop,
                  batch_size=batch_size)
    return {**result, "device": str(dev)}


@ganctl_errors
def style_mix(target: PathLike | None, out: PathLike, rows: Seeds, cols: Seeds, *,
              styles: str = "0-6", truncation: float | None = None, scale: int = 1,
              batch_size: int = GENERATE_BATCH, device: str = "auto", ema: bool = True,
              notes: Notes | None = None, noise_mode: str = "const",
              nvlabs_seeds: bool = False) -> dict:
    """`ganctl sample --style-mix ROWS COLS OUT`: NVlabs' style-mixing figure of a generator
    with a mapping network: each row seed's styles with the layers `styles` taken from each
    column seed's. Returns what `--json` prints.

    styles: layers as text ("0-6", "0,2,4") or a list or range of them.

    Example: ganctl.api.style_mix("runs/m", "mix.png", "0-4", "10-14", styles="0-3")
    """
    from ganctl.stylemix import style_mix as draw

    out = _image_out(out)
    row_seeds, col_seeds = chosen_seeds(rows, None), chosen_seeds(cols, None)
    if not isinstance(styles, str):  # a list or range of layer numbers, as the seeds take them
        styles = ",".join(map(str, seed_list(styles, MAX_SEEDS)))
    whole_number("scale", scale, 1, MAX_SCALE)
    truncation = _common(truncation, batch_size, nvlabs_seeds, [*row_seeds, *col_seeds])
    loaded, dev = _open(target, device, ema, notes, noise_mode, nvlabs_seeds)
    return draw(loaded, row_seeds, col_seeds, out, dev, styles=styles, truncation=truncation,
                scale=scale, batch_size=batch_size)


@ganctl_errors
def export(target: PathLike | None, out: PathLike, *, format: str | None = None,
           ema: bool = True, notes: Notes | None = None) -> dict:
    """`ganctl export`: the generator as TorchScript or ONNX (`format`; default from OUT's
    suffix: .onnx is onnx, else torchscript), checked against the PyTorch generator on fixed
    latents before it is kept. Returns what `--json` prints.

    Example: ganctl.api.export("runs/m", "g.onnx")
    """
    from ganctl.export import export_generator

    out, fmt = export_target(out, format)
    header = locate(target, notes)
    _say_chosen(target, header, notes)
    if out.exists() and out.resolve() == header.path.resolve():
        raise ConfigError(f"{out} is the checkpoint being exported; give OUT a new name")
    flag("ema", ema)
    loaded = load_generator(header, torch.device("cpu"), ema)
    return export_generator(loaded, fmt, out)


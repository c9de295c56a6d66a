"""`ganctl sample` (a grid or image, --out-dir, --interpolate) and `ganctl export`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from ganctl.cli import core
from ganctl.cli.core import (
    _call,
    _console,
    _emit,
    _say,
    _usage,
    app,
)
from ganctl.cli.options import (
    Debug,
    Json,
)
from ganctl.config import (
    RUNTIME,
)

# --- sample ---------------------------------------------------------------------------------------------

SAMPLES, BULK, MOTION, MIXING = "What to draw", "Bulk export", "Interpolation", "Style mixing"
MAX_GRID = 4096  # images in one grid file; more go to --out-dir


_OutText = Annotated[str | None, typer.Argument(
    metavar="OUT", help="The image to write: .png, .jpg or .webp (a grid, or one image with "
    "-n 1); .gif, .mp4 or .png with --interpolate. Not with --out-dir.",
    show_default=False)]
_N = Annotated[int | None, typer.Option(
    "-n", "--num", min=1, max=10_000_000, help="Number of images: seeds SEED..SEED+n-1 (at "
    f"most {MAX_GRID} in one file; more with --out-dir).",
    show_default="64; 8 a class with --class all; 4 seeds with --interpolate",
    rich_help_panel=SAMPLES)]
_Seed = Annotated[int | None, typer.Option(min=0, max=2**63 - 1, help="Image i uses latent "
    "seed SEED+i.", show_default="0",
    rich_help_panel=SAMPLES)]
_Seeds = Annotated[str | None, typer.Option(
    metavar="0-63,100", help="The seeds, as ranges and lists (one latent per seed: an image "
    "depends on its seed alone). Instead of -n/--seed.", show_default="none",
    rich_help_panel=SAMPLES)]
_NvlabsSeeds = Annotated[bool, typer.Option(
    "--nvlabs-seeds", help="Seeds give the latents NVlabs' generate.py draws "
    "(np.random.RandomState(seed).randn(1, z_dim); seeds up to 2**32 - 1): a network "
    "imported from their .pkl makes their images for their seeds.",
    rich_help_panel=SAMPLES)]
_Truncation = Annotated[float | None, typer.Option(
    metavar="PSI", help="Latents from the normal truncated to [-PSI, PSI] (a model with a "
    "mapping network: styles PSI of the way from their mean): lower is more typical, less "
    "varied (0: one image for every seed).", show_default="none",
    rich_help_panel=SAMPLES)]
_Class = Annotated[str | None, typer.Option(
    "--class", metavar="K|NAME|all", help="Conditional models: the class by index or name, "
    "or all: one grid row per class.", show_default="seed mod the number of classes",
    rich_help_panel=SAMPLES)]
_NoEma = Annotated[bool, typer.Option(
    "--no-ema", help="Sample G itself, not its EMA G_ema.", rich_help_panel=SAMPLES)]
_NoiseMode = Annotated[str, typer.Option(
    "--noise-mode", metavar="const|random|none", help="StyleGAN2's per-pixel noise: const "
    "(its fixed noise: a seed's image never changes), random (fresh each time) or none.",
    rich_help_panel=SAMPLES)]
_StyleMix = Annotated[tuple[str, str] | None, typer.Option(
    "--style-mix", metavar="ROWS COLS", help="StyleGAN2: NVlabs' style-mixing figure: a row "
    "per ROWS seed, a column per COLS seed, each cell the row's styles with the layers "
    "--styles from the column's (e.g. --style-mix 0-4 10-14 mix.png).",
    show_default=False, rich_help_panel=MIXING)]
_Styles = Annotated[str, typer.Option(
    metavar="0-6", help="The layers --style-mix takes from the column seeds, 0 the coarsest (a "
    "model of R px has 2 log2(R) - 2: 8 at 32 px, 14 at 256, 18 at 1024; 0-6 are NVlabs' "
    "coarse styles at 1024).", rich_help_panel=MIXING)]
_Nrow = Annotated[int | None, typer.Option(min=1, help="Images per grid row.",
    show_default="square", rich_help_panel=SAMPLES)]
_Scale = Annotated[int, typer.Option(min=1, max=64, help="Nearest-neighbour upscaling (a 32x32 "
    "model's grid at 4 is viewable).", rich_help_panel=SAMPLES)]
_OutDir = Annotated[Path | None, typer.Option(
    "--out-dir", metavar="DIR", help="Bulk export: one file per image, named by seed (class "
    "folders for conditional models), labels.csv and manifest.json; resumable.",
    show_default="none", rich_help_panel=BULK)]
_Fmt = Annotated[str | None, typer.Option(
    "--format", help="Bulk export: png, jpg, webp or npz (one file takes its format from "
    "OUT's suffix).", show_default="png", rich_help_panel=BULK)]
_Interpolate = Annotated[bool, typer.Option(
    "--interpolate", help="Interpolation between the seeds' latents, looping (spherical in z; "
    "in w, a straight line, for a model with a mapping network): "
    "OUT.gif, OUT.mp4 (needs ffmpeg) or OUT.png (a row per pair).",
    rich_help_panel=MOTION)]
_Frames = Annotated[int, typer.Option(min=2, max=10_000, help="Frames of the whole loop.",
    rich_help_panel=MOTION)]
_Fps = Annotated[int, typer.Option(min=1, max=60, help="Frames per second of a GIF or MP4.",
    rich_help_panel=MOTION)]
_Loop = Annotated[bool, typer.Option("--loop/--no-loop", help="Back from the last seed to the "
    "first (a GIF that repeats without a jump).",
    rich_help_panel=MOTION)]
_Ckpt = Annotated[str | None, typer.Option(
    "--ckpt", metavar="CKPT|RUN_DIR", help="Checkpoint, run directory, latest, best, or an "
    "NVlabs network .pkl (imported on the fly).",
    show_default="the newest checkpoint under ./runs")]
_BatchSize = Annotated[int, typer.Option(min=1, max=65536, help="Latents per G call.",
    rich_help_panel=RUNTIME)]
_Device = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:K | mps.",
    rich_help_panel=RUNTIME)]


@app.command()
def sample(
    out_text: _OutText = None,
    n: _N = None,
    seed: _Seed = None,
    seeds: _Seeds = None,
    nvlabs_seeds: _NvlabsSeeds = False,
    truncation: _Truncation = None,
    class_: _Class = None,
    no_ema: _NoEma = False,
    noise_mode: _NoiseMode = "const",
    style_mix: _StyleMix = None,
    styles: _Styles = "0-6",
    nrow: _Nrow = None,
    scale: _Scale = 1,
    out_dir: _OutDir = None,
    fmt: _Fmt = None,
    interpolate: _Interpolate = False,
    frames: _Frames = 60,
    fps: _Fps = 20,
    loop: _Loop = True,
    ckpt: _Ckpt = None,
    batch_size: _BatchSize = 256,
    device: _Device = "auto",
    json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Draw samples from a checkpoint's EMA generator: a grid, one image, a folder of many
    (--out-dir), or an interpolation (--interpolate).

    Example: ganctl sample -n 64 out.png --ckpt runs/0001-shapes-dcgan --seed 7
    """
    from ganctl.sample import check_nvlabs_seeds, check_truncation

    out = _output(out_text, out_dir, style_mix is not None)
    _check_modes(out, out_dir, interpolate, fmt, scale, nrow, class_, frames != 60 or fps != 20
                 or not loop, seeds is not None and (n is not None or seed is not None))
    if style_mix is not None:
        _check_style_mix(n, seed, seeds, class_, interpolate, out_dir, nrow)
    chosen = _chosen(n, seed, seeds, 8 if class_ == "all" else 4 if interpolate else 64)
    if truncation is not None:
        _usage("--truncation", check_truncation, truncation)
    drawing: dict[str, Any] = {"truncation": truncation, "class_": class_, "batch_size": batch_size,
               "device": device, "ema": not no_ema, "notes": _say, "noise_mode": noise_mode,
               "nvlabs_seeds": nvlabs_seeds}
    if nvlabs_seeds:  # (--style-mix's seeds are its own, checked by the API)
        _usage("--seeds", check_nvlabs_seeds, chosen)
    if style_mix is not None:
        return _style_mix(ckpt, style_mix, out, styles, scale, drawing, json_mode, debug)
    if styles != "0-6":
        raise typer.BadParameter("--styles is for --style-mix", param_hint="--styles")
    if out_dir is not None:
        return _bulk(ckpt, chosen, out_dir, fmt or "png", drawing, json_mode, debug)
    assert out is not None
    if interpolate:
        motion = {"frames": frames, "fps": fps, "loop": loop, "scale": scale}
        return _interpolate(ckpt, chosen, out, motion, drawing, json_mode, debug)
    return _grid(ckpt, out, chosen, nrow, scale, drawing, json_mode, debug)


def _output(out_text: str | None, out_dir: Path | None, figure: bool) -> Path | None:
    """OUT as a path; OUT or --out-dir, exactly one of them (OUT alone for --style-mix's
    `figure`)."""
    if figure and out_text is None:
        raise typer.BadParameter("--style-mix ROWS COLS OUT.png: give the figure's file after "
                                 "the row and column seeds", param_hint="OUT")
    if out_text is not None and out_text.endswith(("/", os.sep)):  # as typed: "new/" is a folder
        raise typer.BadParameter(f"{out_text} names a folder; give a file's name, like "
                                 f"{out_text}grid.png (or --out-dir {out_text} for one file per "
                                 "image)", param_hint="OUT")
    out = None if out_text is None else Path(out_text)
    if (out is None) == (out_dir is None):
        raise typer.BadParameter("give OUT (one file) or --out-dir DIR (one file per image)",
                                 param_hint="OUT")
    return out


def _chosen(n: int | None, seed: int | None, seeds: str | None, default_n: int) -> Sequence[int]:
    """The seeds asked for: --seeds, or -n from --seed (default_n of them without -n)."""
    from ganctl.seeds import parse_seeds

    seed = seed or 0
    chosen = (_usage("--seeds", parse_seeds, seeds) if seeds is not None
              else range(seed, seed + (n or default_n)))
    if chosen[-1] > 2**63 - 1:
        raise typer.BadParameter(f"seeds {chosen[0]}..{chosen[-1]} go past 2**63 - 1; use a "
                                 "smaller --seed", param_hint="--seed")
    return chosen


def _grid(ckpt: str | None, out: Path, chosen: Sequence[int], nrow: int | None, scale: int,
          drawing: dict[str, Any], json_mode: bool, debug: bool) -> None:
    """sample OUT: one grid or image (api.sample_to_file)."""
    from ganctl import api

    r = _call(debug, lambda: api.sample_to_file(ckpt, out, chosen, nrow=nrow, scale=scale,
                                                **drawing))
    images, which = (f"{r['n']} images", "seeds") if r["n"] > 1 else ("1 image", "seed")
    _emit(json_mode, r, f"wrote {r['out']}: {images} ({r['width']}x{r['height']} px) from "
                        f"{r['checkpoint']} (step {r['step']}), {which} {r['seeds']}, "
                        f"device {r['device']}")


def _check_style_mix(n: int | None, seed: int | None, seeds: str | None, class_: str | None,
                     interpolate: bool, out_dir: Path | None, nrow: int | None) -> None:
    """--style-mix takes its seeds from its own two values, and draws one figure."""
    given = [name for name, value in (("-n", n), ("--seed", seed), ("--seeds", seeds),
                                      ("--class", class_), ("--nrow", nrow)) if value is not None]
    if interpolate or out_dir is not None:
        given.append("--interpolate" if interpolate else "--out-dir")
    if given:
        raise typer.BadParameter(f"--style-mix takes its seeds as ROWS COLS and draws one figure; "
                                 f"leave out {', '.join(given)}", param_hint="--style-mix")


def _style_mix(ckpt: str | None, sides: tuple[str, str], out: Path | None, styles: str,
               scale: int, drawing: dict[str, Any], json_mode: bool, debug: bool) -> None:
    from ganctl import api
    from ganctl.seeds import compact_seeds, parse_seeds

    assert out is not None  # (sample checked that OUT or --out-dir is given, and not --out-dir)
    rows, cols = (_usage("--style-mix", parse_seeds, side) for side in sides)
    drawing = {k: v for k, v in drawing.items() if k != "class_"}
    r = _call(debug, lambda: api.style_mix(ckpt, out, rows, cols, styles=styles, scale=scale,
                                           **drawing))
    _emit(json_mode, r, f"wrote {r['out']}: style mixing of rows {r['rows']} and columns "
                        f"{r['columns']} (layers {compact_seeds(r['styles'])} of {r['num_ws']} "
                        f"from the columns), {r['width']}x{r['height']} px, from {r['checkpoint']}")


def _check_modes(out: Path | None, out_dir: Path | None, interpolate: bool, fmt: str | None,
                 scale: int, nrow: int | None, class_: str | None, motion: bool,
                 seeds_twice: bool) -> None:
    """Options of another mode are a bad command line, not silently ignored (`motion`:
    --frames, --fps or --no-loop given; `seeds_twice`: --seeds with -n or --seed)."""

    def bad(message: str, hint: str) -> None:
        raise typer.BadParameter(message, param_hint=hint)

    if interpolate and out_dir is not None:
        bad("--interpolate writes one file (OUT.gif, .mp4 or .png), not --out-dir", "--interpolate")
    if not interpolate and motion:
        bad("--frames, --fps and --no-loop are for --interpolate", "--interpolate")
    if seeds_twice:
        bad("--seeds names the seeds itself: leave out -n and --seed", "--seeds")

    if fmt is not None and out_dir is None:
        bad("--format is for --out-dir; one file takes its format from OUT's suffix "
            "(.png, .jpg, .webp)", "--format")
    if out_dir is not None and (scale != 1 or nrow is not None):
        bad("--scale and --nrow shape a grid or one image; --out-dir writes each image at the "
            "model's size", "--scale/--nrow")
    if interpolate and nrow is not None:
        bad("--interpolate's PNG has one row per pair of seeds; leave --nrow out", "--nrow")
    if class_ == "all" and (interpolate or out_dir is not None):
        bad("--class all draws a grid with a row per class; with --out-dir or --interpolate give "
            "one class (index or name), or leave --class out", "--class")
    if out is not None and not interpolate and out.suffix.lower() in (".gif", ".mp4"):
        bad(f"{out.name}: .gif and .mp4 are for --interpolate; a grid is .png, .jpg or .webp",
            "OUT")


def _bulk(ckpt: str | None, seeds: Sequence[int], out_dir: Path, fmt: str, drawing: dict[str, Any],
          json_mode: bool, debug: bool) -> None:
    """sample --out-dir: one file per seed, resumable (api.export_images)."""
    from ganctl import api
    from ganctl.output.progress import RunLog

    log = RunLog(_console(json_mode))
    done = {"count": 0, "of": len(seeds)}
    bar: list[Callable[[int], None]] = []

    def start(count: int) -> None:  # once the settings are checked and the folder scanned
        done["of"] = count
        more = (f" ({len(seeds)} asked for, and the rest of the export already there)"
                if count != len(seeds) else "")
        bar.append(log.task(f"writing {count} images into {out_dir}{more}", count))

    def progress(k: int) -> None:
        done["count"] += k
        bar[0](k)

    def at_stop() -> tuple[str, dict[str, Any]]:
        if not bar:
            return "before any image was written", {}
        return (f"with {done['count']:,} of {done['of']:,} images in {out_dir}; run the same "
                "command again to finish (the files there are kept)",
                {"out_dir": str(out_dir), "done": done["count"], "count": done["of"]})

    core._OUTPUT.at_stop = at_stop
    r = _call(debug, lambda: api.export_images(ckpt, out_dir, seeds, format=fmt, progress=progress,
                                               start=start, **drawing))
    speed = f"at {r['images_per_s']:,.0f} img/s" if r["written"] else "nothing left to write"
    _emit(json_mode, r, f"{out_dir}: {r['count']} images ({r['written']} written, {r['skipped']} "
                        f"already there), {speed}")


def _interpolate(ckpt: str | None, seeds: Sequence[int], out: Path, motion: dict[str, Any],
                 drawing: dict[str, Any], json_mode: bool, debug: bool) -> None:
    """sample --interpolate (api.interpolate); the walk's own errors as a bad command line."""
    from ganctl import api
    from ganctl.interpolate import check_request

    _usage("--interpolate", check_request, seeds, motion["frames"], motion["fps"], motion["scale"],
           out, motion["loop"])

    r = _call(debug, lambda: api.interpolate(ckpt, out, seeds, **motion, **drawing))
    through = f"seeds {', '.join(map(str, seeds))}"
    if r["format"] != "png":
        return _emit(json_mode, r, f"wrote {r['out']}: {r['frames']} frames ({r['width']}x"
                                   f"{r['height']} px) through {through}")
    cut = (f"; a PNG row holds at most {r['columns']} images, not the {r['columns_asked']} that "
           f"--frames {motion['frames']} asks for: a .gif or .mp4 shows every frame"
           if r["columns_asked"] > r["columns"] else "")
    _emit(json_mode, r, f"wrote {r['out']}: a grid of {r['rows']} rows (one per pair of {through}"
                        f"{', back to the first' if motion['loop'] else ''}) of {r['columns']} "
                        f"images each ({r['width']}x{r['height']} px){cut}")


@app.command()
def export(
    paths: Annotated[list[str], typer.Argument(
        metavar="[CKPT|RUN_DIR|PKL] OUT", help="The checkpoint, run directory, latest, best or an "
        "NVlabs network .pkl (default: the newest checkpoint under ./runs), then the file to "
        "write (.pt for torchscript, .onnx for onnx, by convention). A StyleGAN2 is written at "
        "truncation 1 with its fixed noise, the mapping network inside.", show_default=False)],
    fmt: Annotated[str | None, typer.Option("--format", help="torchscript or onnx (needs: pip "
                                            "install onnx onnxruntime).",
                                            show_default="from OUT: .onnx is onnx, else torchscript")] = None,
    no_ema: Annotated[bool, typer.Option("--no-ema", help="Export G itself, not G_ema.")] = False,
    json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Export the generator to run without ganctl: inputs z (B, z_dim) float32 (and c (B,) int64
    for a conditional model), output images (B, C, H, W) in [-1, 1]; any batch size. The file is
    checked against the PyTorch generator on fixed latents before it is kept.

    Example: ganctl export runs/0001-shapes-dcgan g.onnx --format onnx
    """
    from ganctl import api

    if len(paths) > 2:
        raise typer.BadParameter("give at most a checkpoint and OUT", param_hint="[CKPT|RUN_DIR] OUT")
    target, out = (None, paths[0]) if len(paths) == 1 else (paths[0], paths[1])
    if len(paths) == 1 and (Path(out).is_dir() or Path(out).suffix.lower() == ".safetensors"
                            or out in ("latest", "best")):
        raise typer.BadParameter(f"{out} is what to export; give OUT, the file to write, "
                                 f"after it: ganctl export {out} g.pt", param_hint="OUT")
    r = _call(debug, lambda: api.export(target, out, format=fmt, ema=not no_ema, notes=_say))
    takes = f"z (B, {r['z_dim']})" + (f" and c (B,) of {len(r['classes'])} classes" if r["classes"] else "")
    _emit(json_mode, r, f"wrote {r['out']} ({r['format']}, {r['bytes'] / 1e6:.1f} MB): takes "
                        f"{takes}, gives images (B, {r['channels']}, {r['resolution']}, "
                        f"{r['resolution']}) in [-1, 1]; the same images as the checkpoint's "
                        f"generator within {r['max_abs_diff']:.1e} (batch sizes "
                        f"{', '.join(map(str, r['checked_batch_sizes']))})")

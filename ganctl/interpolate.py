"""Latent walks: frames between seeds' latents, as an animated GIF, an MP4 video or a PNG grid.

The path visits the seeds' latents in order (z of seed s is `latents_from_seeds`' row, the z of
`ganctl sample`), moving between consecutive ones along a great circle (slerp), and with `loop`
back from the last to the first, so that the animation repeats without a jump. For a generator
with a mapping network it walks the seeds' styles w (truncated toward w_avg) in straight lines.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import torch

from ganctl.errors import ConfigError, GanctlError
from ganctl.fsutil import atomic_write, clear_temp, fsync_dir, temp_path
from ganctl.imagefiles import make_grid, png_bytes, to_pil, upscale
from ganctl.models.generator import has_mapping, ws
from ganctl.sample import (
    GENERATE_BATCH,
    LoadedGenerator,
    check_truncation,
    generate,
    labels_for_seeds,
    seed_latents,
    synthesize,
)
from ganctl.seeds import seed_list

MAX_FRAMES = 10_000  # frames of one walk: more is a typo, not a video
MAX_SCALE = 64  # as `ganctl sample --scale`; the size cap below guards memory
MAX_FPS = 60  # a GIF counts time in 1/100 s, and viewers slow frames under 2/100 s down
MAX_RAW_BYTES = 2 * 2**30  # a memory bound on the pixels held at once
COPIES = 3  # copies of the pixels held at once: the generated batches, the frames or grid, the file
GRID_COLUMNS = 16  # at most this many images per row of a PNG walk
PARALLEL = 0.9995  # |cos| of the angle from which slerp falls back to lerp (sin(angle) ~ 0.03)
FORMATS = (".gif", ".mp4", ".png")
MAX_REASON = 300  # characters of ffmpeg's last stderr line kept in the error


class FfmpegError(GanctlError):
    """ffmpeg ran but failed to write the video."""


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation from a (t = 0) to b (t = 1) along the great circle through them:
    z = sin((1 - t) theta) / sin(theta) a + sin(t theta) / sin(theta) b, theta the angle between
    a and b (Shoemake 1985; for GAN latents White 2016, "Sampling Generative Networks"). Between
    vectors of one norm it keeps that norm, where lerp cuts through the low-density middle of
    the Gaussian. Vectors (anti)parallel (|cos theta| > PARALLEL) or zero have no one great circle
    between them: there it is lerp, (1 - t) a + t b. t = 0 and t = 1 return a and b exactly."""
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    a64, b64 = a.double(), b.double()  # the angle of nearly parallel vectors is lost in float32
    norms = a64.norm() * b64.norm()
    cos = (a64 @ b64 / norms).clamp(-1, 1) if norms > 0 else torch.tensor(1.0, dtype=torch.float64)
    if abs(float(cos)) > PARALLEL:
        z = (1 - t) * a64 + t * b64
    else:
        theta = torch.arccos(cos)
        z = (torch.sin((1 - t) * theta) * a64 + torch.sin(t * theta) * b64) / torch.sin(theta)
    return z.to(a.dtype)


def positions(seeds: int, frames: int, loop: bool = True) -> list[tuple[int, float]]:
    """Where each frame stands: (k, t), t of the way from seed k to seed k + 1 (mod seeds).

    `frames` is the whole animation's frame count, spread evenly over the path: with `loop` the
    `seeds` segments 1 -> 2 -> ... -> n -> 1, the last frame one step short of the first (so a
    repeat is seamless); without, the n - 1 segments 1 -> ... -> n, the last frame on seed n.
    A frame that lands on a seed has t = 0 exactly: always the first one, and every
    frames / segments-th when that divides."""
    segments = seeds if loop else seeds - 1
    steps = frames if loop else frames - 1  # steps between frames along the path
    out = []
    for i in range(frames):
        k, r = divmod(i * segments, steps)  # integers: seeds are hit exactly, no rounding
        out.append((k, r / steps))
    return out


def interpolate(loaded: LoadedGenerator, seeds: Sequence[int], out: Path, frames: int = 60, *,
                truncation: float | None = None, class_: int | str | None = None,
                device: torch.device, fps: int = 20, scale: int = 1, loop: bool = True,
                batch_size: int = GENERATE_BATCH) -> dict:
    """Write a walk through the latents of `seeds` to `out`, by its suffix:

    .gif  an animated GIF of `frames` frames in all, `fps` frames a second (timed in 1/100 s),
          repeating forever with `loop`, played once without; identical consecutive frames are
          merged by the GIF writer (same total time).
    .mp4  an H.264 video (yuv420p, the size padded with black to even numbers) through ffmpeg,
          which must be on PATH.
    .png  a grid with one row per segment (seed k -> seed k + 1): each row from its start seed's
          image to its end seed's, min(16, frames // segments + 1) evenly spaced images.

    frames: the frames of the whole animation (not per segment), from 2 to 10,000 and at least
    one per segment; segments = len(seeds) with `loop` (the last seed back to the first; with
    two seeds 1 -> 2 -> 1), len(seeds) - 1 without. The first frame is seed[0]'s image exactly
    as `ganctl sample` draws it.
    class_: a conditional model draws every frame in this class (index or name); None: each
    frame in the class of its segment's start seed (seed mod classes, as `ganctl sample`), so
    every frame that lands on a seed is that seed's own image and the class changes there.
    scale: each pixel as a scale x scale block (nearest neighbour), 1 to 64; the grid's too.
    Returns out, frames (the images in the file), seeds, width, height (of the file's images),
    format, checkpoint, step; for .png also rows, columns and columns_asked (frames // segments
    + 1, more than columns when the grid's cap cut the row).
    """
    seeds, out = seed_list(list(seeds)), Path(out)
    suffix = out.suffix.lower()
    segments = check_request(seeds, frames, fps, scale, out, loop)
    config = loaded.config
    height, width = (config.resolution * scale,) * 2
    columns = min(GRID_COLUMNS, frames // segments + 1)  # of a .png walk
    _check_memory(segments * columns if suffix == ".png" else frames, height, width, config.channels)
    ffmpeg = _ffmpeg(out) if suffix == ".mp4" else None
    z = seed_latents(loaded.G, seeds, config.z_dim, truncation, loaded.nvlabs_seeds)
    labels = labels_for_seeds(seeds, config, class_)  # checked before anything is generated
    if has_mapping(loaded.G):  # the walk goes through the seeds' styles: w, truncated
        z = _styles(loaded, z, labels, truncation, device)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the folder {out.parent}: {e.strerror}") from None
    if suffix == ".png":
        count, height, width = _write_grid(loaded, z, labels, out, segments, columns, device, scale,
                                           batch_size)
        grid_shape = {"rows": segments, "columns": columns,
                      "columns_asked": frames // segments + 1}
    else:
        stream = _render(loaded, z, labels, positions(len(seeds), frames, loop), device, scale,
                         batch_size)
        if suffix == ".gif":
            _write(out, lambda: atomic_write(out, _gif(stream, fps, loop)))
        else:
            assert ffmpeg is not None
            height, width = height + height % 2, width + width % 2
            _write(out, lambda: _mp4(ffmpeg, stream, out, width, height, fps))
        count, grid_shape = frames, {}
    return {"out": str(out), "frames": count, "seeds": seeds, "width": width, "height": height,
            "format": suffix[1:], "checkpoint": str(loaded.header.path),
            "step": loaded.header.step, **grid_shape}


def _check_memory(count: int, height: int, width: int, channels: int) -> None:
    """A walk of `count` images of width x height must fit MAX_RAW_BYTES, COPIES of its pixels
    held at once."""
    if count * height * width * channels * COPIES > MAX_RAW_BYTES:
        raise ConfigError(f"{count} images of {width}x{height} take more than "
                          f"{MAX_RAW_BYTES // 2**30} GiB of memory (pixels, the frames and the "
                          "file held at once); use fewer frames or seeds, or a smaller scale")


def _write_grid(loaded: LoadedGenerator, z: torch.Tensor, labels: torch.Tensor | None, out: Path,
                segments: int, columns: int, device: torch.device, scale: int,
                batch_size: int) -> tuple[int, int, int]:
    """A .png walk: one row per segment, `columns` evenly spaced images from its start seed's
    to its end seed's. Returns the images in the grid, and its height and width in pixels."""
    stops = [(k, j / (columns - 1)) for k in range(segments) for j in range(columns)]
    images = torch.cat(list(_render(loaded, z, labels, stops, device, scale, batch_size)))
    grid = make_grid(images, nrow=columns)
    _write(out, lambda: atomic_write(out, png_bytes(grid)))
    return len(stops), grid.shape[0], grid.shape[1]


def check_request(seeds: list[int], frames: int, fps: int, scale: int, out: Path,
                  loop: bool = True) -> int:
    """The request's own errors, before any model is read; the walk's segments."""
    suffix = Path(out).suffix.lower()
    if len(set(seeds)) < 2:
        got = f"{len(seeds)}" if len(seeds) < 2 else f"only seed {seeds[0]}"
        raise ConfigError(f"an interpolation needs two different seeds or more, got {got}; e.g. "
                          "--seeds 1,2,3")
    for name, value, low, high in (("frames", frames, 2, MAX_FRAMES), ("fps", fps, 1, MAX_FPS),
                                   ("scale", scale, 1, MAX_SCALE)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    if suffix not in FORMATS:
        raise ConfigError(f"output {out} must end in .gif (animation), .mp4 (video, needs "
                          "ffmpeg) or .png (a grid, one row per pair of seeds)")
    segments = len(seeds) if loop else len(seeds) - 1
    if segments > MAX_FRAMES:
        raise ConfigError(f"{len(seeds)} seeds make {segments} segments, more than one walk's "
                          f"{MAX_FRAMES} frames can pass; walk fewer seeds at a time")
    if frames < segments:
        raise ConfigError(f"{frames} frames cannot pass {len(seeds)} seeds; give at least "
                          f"{segments} frames (one per seed), e.g. "
                          f"{min(segments * 20, MAX_FRAMES)}")
    return segments


def _ffmpeg(out: Path) -> str:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise ConfigError(f"cannot write {out}: ffmpeg is not on PATH; install it or write "
                          f"{out.with_suffix('.gif')}")
    return ffmpeg


def _write(out: Path, write) -> None:
    try:
        write()
    except OSError as e:
        raise ConfigError(f"cannot write {out}: {e.strerror or e}") from None


def _render(loaded: LoadedGenerator, z: torch.Tensor, labels: torch.Tensor | None,
            stops: Sequence[tuple[int, float]], device: torch.device, scale: int,
            batch_size: int = GENERATE_BATCH) -> Iterator[torch.Tensor]:
    """The images at `stops` ((k, t): t of the way from seed k to k + 1, mod the seeds), as
    uint8 (n, C, H * scale, W * scale) batches: at most GENERATE_BATCH latents held at once."""
    n = len(z)
    mapped = has_mapping(loaded.G)  # then z holds the seeds' w, walked in straight lines
    for i in range(0, len(stops), batch_size):
        part = stops[i:i + batch_size]
        if mapped:
            ws = torch.stack([torch.lerp(z[k % n], z[(k + 1) % n], t) for k, t in part])
            yield upscale(synthesize(loaded.G, ws, device), scale)
            continue
        zs = torch.stack([slerp(z[k % n], z[(k + 1) % n], t) for k, t in part])
        # the start seed's class; a stop on a seed (t = 0 or 1) that seed's own
        c = None if labels is None else torch.stack(
            [labels[(k + 1) % n] if t == 1 else labels[k % n] for k, t in part])
        yield upscale(generate(loaded.G, zs, device, c), scale)


@torch.no_grad()
def _styles(loaded: LoadedGenerator, z: torch.Tensor, labels: torch.Tensor | None,
            truncation: float | None, device: torch.device) -> torch.Tensor:
    """The seeds' w (n, num_ws, w_dim) on the CPU, each for its seed's class, truncated."""
    G = loaded.G
    psi = None if truncation is None else check_truncation(truncation)
    c = None if labels is None else labels.to(device)
    return ws(G, z.to(device), c, psi).cpu()


def _gif(batches: Iterator[torch.Tensor], fps: int, loop: bool) -> bytes:
    """An animated GIF ("L" for one channel, RGB quantised per frame otherwise)."""
    frames = [to_pil(image.permute(1, 2, 0)) for batch in batches for image in batch]  # (H, W, C)
    # loop=0: repeat forever; no loop key: the NETSCAPE block is left out and it plays once
    repeat = {"loop": 0} if loop else {}
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                   duration=round(1000 / fps), optimize=False, **repeat)
    return buf.getvalue()


def _mp4(ffmpeg: str, batches: Iterator[torch.Tensor], out: Path, width: int, height: int,
         fps: int) -> None:
    """Pipe raw RGB frames (padded to width x height) to ffmpeg, which encodes H.264 into a temp
    file beside `out`; synced and renamed over `out` once ffmpeg succeeded, so that `out` is the
    old file or the whole new video, never a part (ffmpeg failing, ganctl killed, a power cut)."""
    tmp = temp_path(out)
    clear_temp(tmp)  # ffmpeg writes through a link planted at the name
    command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo",
               "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
               "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart",
               "-f", "mp4", str(tmp)]
    try:
        with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty ffmpeg never blocks
            code = _encode(command, batches, err, width, height)
            err.seek(0)
            lines = err.read().decode(errors="replace").strip().splitlines()
        if code != 0:
            raise FfmpegError(f"ffmpeg could not write {out.name}: {_why(code, lines)}; write "
                              f"{out.with_suffix('.gif').name} instead, or check the ffmpeg install")
        with open(tmp, "rb") as f:  # ffmpeg does not sync what it wrote
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(out.parent)


def _encode(command: list[str], batches: Iterator[torch.Tensor], err: BinaryIO, width: int,
            height: int) -> int:
    """Run ffmpeg with the frames on its stdin and its stderr to `err`; its exit status."""
    try:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=err)
    except OSError as e:  # found on PATH but cannot run: not executable, a broken binary ...
        raise FfmpegError(f"cannot run {command[0]}: {e.strerror or e}; reinstall ffmpeg, or "
                          "write a .gif instead") from None
    assert proc.stdin is not None
    try:
        for batch in batches:
            proc.stdin.write(_rgb(batch, width, height).numpy().tobytes())
        proc.stdin.close()
    except BrokenPipeError:  # ffmpeg ended early: its stderr says why
        pass
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc.wait()


def _why(code: int, lines: list[str]) -> str:
    """ffmpeg's last stderr line (where it says what went wrong), else how it ended."""
    if lines:
        return lines[-1].strip()[:MAX_REASON]
    if code < 0:  # killed: no word from ffmpeg itself
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"it was killed by {name} ({signal.strsignal(-code) or 'a signal'})"
    return f"it exited with status {code} and said nothing"


def _rgb(batch: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(n, C, H, W) uint8 -> (n, height, width, 3): one channel repeated, black padding at the
    right and bottom to the (even) size."""
    n, c, h, w = batch.shape
    frames = torch.zeros(n, height, width, 3, dtype=torch.uint8)
    frames[:, :h, :w] = batch.permute(0, 2, 3, 1).expand(n, h, w, 3)  # (n, H, W, C); C = 1 or 3
    return frames


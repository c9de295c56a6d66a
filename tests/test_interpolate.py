"""Latent walks (ganctl.interpolate): slerp, the frames' positions, and the GIF, MP4 and PNG
files, on the tiny trained run and on a stub generator."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CPU, invoke
from PIL import Image, ImageSequence
from torch import nn

from ganctl import interpolate as walk
from ganctl import rundir
from ganctl.errors import ConfigError
from ganctl.imagefiles import GRID_PADDING
from ganctl.sample import LoadedGenerator, generate, latents_from_seeds, load_generator


@pytest.fixture(scope="module")
def loaded(_trained: Path) -> LoadedGenerator:
    return load_generator(rundir.locate(_trained, lambda message: None), CPU)


def images_of(loaded: LoadedGenerator, seeds: list[int]) -> torch.Tensor:
    """Each seed's image as `ganctl sample` draws it, one seed per batch."""
    z = latents_from_seeds(seeds, loaded.config.z_dim)
    return torch.cat([generate(loaded.G, z[i:i + 1], CPU) for i in range(len(seeds))])


def gif_frames(path: Path) -> list[np.ndarray]:
    with Image.open(path) as im:
        return [np.asarray(frame.convert("RGB"), dtype=np.int16) for frame in ImageSequence.Iterator(im)]


# --- slerp and positions ----------------------------------------------------------------------------

def unit(*values: float) -> torch.Tensor:
    v = torch.tensor(values, dtype=torch.float32)
    return v / v.norm()


@pytest.mark.parametrize("t", [0.1, 0.25, 0.5, 0.9])
def test_slerp_keeps_the_norm_between_unit_vectors(t):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 64, generator=g)
    a, b = a / a.norm(), b / b.norm()
    z = walk.slerp(a, b, t)
    assert z.dtype == torch.float32
    assert z.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.lerp(a, b, t).norm() < 0.99  # what lerp would have done: cut inside the sphere


def test_slerp_follows_the_great_circle():
    a, b = unit(1, 0, 0), unit(0, 1, 0)
    assert torch.allclose(walk.slerp(a, b, 0.5), unit(1, 1, 0), atol=1e-7)
    angle = math.radians(30)  # a third of the way: 30 of 90 degrees
    assert torch.allclose(walk.slerp(a, b, 1 / 3), torch.tensor([math.cos(angle), math.sin(angle), 0]),
                          atol=1e-7)


def test_slerp_endpoints_are_exact():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 100, generator=g)
    assert torch.equal(walk.slerp(a, b, 0), a) and torch.equal(walk.slerp(a, b, 0.0), a)
    assert torch.equal(walk.slerp(a, b, 1), b)
    assert walk.slerp(a, b, 0) is not a  # a copy: changing it leaves the latent alone


@pytest.mark.parametrize("b", [unit(1, 2, 3) * 3, -unit(1, 2, 3) * 2, torch.zeros(3)],
                         ids=["parallel", "antiparallel", "zero"])
def test_slerp_falls_back_to_lerp_without_one_great_circle(b):
    a = unit(1, 2, 3)
    for t in (0.25, 0.5, 0.75):
        z = walk.slerp(a, b, t)
        assert torch.isfinite(z).all()
        assert torch.allclose(z, torch.lerp(a, b, t), atol=1e-6)
    assert torch.equal(walk.slerp(torch.zeros(3), torch.zeros(3), 0.5), torch.zeros(3))


def test_positions_spread_the_frames_over_the_loop():
    stops = walk.positions(3, 60, loop=True)
    assert len(stops) == 60
    assert stops[0] == (0, 0.0) and stops[20] == (1, 0.0) and stops[40] == (2, 0.0)
    assert stops[-1] == (2, 0.95)  # one step short of seed 0: the repeat is seamless
    assert stops[1] == (0, 0.05)
    assert walk.positions(2, 4) == [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5)]  # 1 -> 2 -> 1


def test_positions_without_loop_end_on_the_last_seed():
    stops = walk.positions(3, 5, loop=False)
    assert stops == [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5), (2, 0.0)]
    assert walk.positions(2, 7, loop=False)[-1] == (1, 0.0)


def test_upscale_is_nearest_neighbour():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.uint8).reshape(2, 3, 2, 2)  # (N, C, H, W)
    y = walk.upscale(x, 3)
    assert y.shape == (2, 3, 6, 6)
    assert torch.equal(y[:, :, ::3, ::3], x)
    assert torch.equal(y[:, :, 2, 5], x[:, :, 0, 1])
    assert walk.upscale(x, 1) is x


# --- GIF ---------------------------------------------------------------------------------------

def test_gif_frames_size_and_loop(loaded, tmp_path):
    out = tmp_path / "new" / "folder" / "walk.gif"  # the folder is made
    result = walk.interpolate(loaded, [1, 2, 3], out, 12, device=CPU, fps=25, scale=2)
    res = loaded.config.resolution
    assert result == {"out": str(out), "frames": 12, "seeds": [1, 2, 3], "width": 2 * res,
                      "height": 2 * res, "format": "gif", "checkpoint": str(loaded.header.path),
                      "step": loaded.header.step}
    with Image.open(out) as im:
        assert im.format == "GIF" and im.n_frames == 12 and im.size == (2 * res, 2 * res)
        assert im.info["loop"] == 0  # repeat forever
        assert im.info["duration"] == 40  # 1000 / 25 ms
    frames = gif_frames(out)
    first = images_of(loaded, [1])[0].permute(1, 2, 0).numpy().astype(np.int16)  # (H, W, C)
    # the GIF's palette (at most 256 colours a frame) is lossy: the first frame is seed 1's
    # image up to quantisation (exactness is tested on the lossless PNG below)
    assert np.abs(frames[0][::2, ::2] - first).mean() < 4
    assert np.array_equal(frames[0][::2, ::2], frames[0][1::2, 1::2])  # 2x2 blocks
    # the loop closes: the last frame is one step from the first, closer than the middle one
    step_back = np.abs(frames[-1] - frames[0]).mean()
    assert step_back < np.abs(frames[6] - frames[0]).mean() / 2
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temp file left


def test_gif_of_two_seeds_goes_there_and_back_and_without_loop_plays_once(loaded, tmp_path):
    walk.interpolate(loaded, [5, 9], tmp_path / "a.gif", 8, device=CPU)
    there_and_back = gif_frames(tmp_path / "a.gif")
    assert len(there_and_back) == 8
    # frame 4 is seed 9 (t = 0 of the way back), halfway round the loop
    nine = images_of(loaded, [9])[0].permute(1, 2, 0).numpy().astype(np.int16)
    assert np.abs(there_and_back[4] - nine).mean() < 4
    walk.interpolate(loaded, [5, 9], tmp_path / "b.gif", 5, device=CPU, loop=False)
    with Image.open(tmp_path / "b.gif") as im:
        assert im.n_frames == 5 and "loop" not in im.info  # no NETSCAPE block: plays once
    assert np.abs(gif_frames(tmp_path / "b.gif")[-1] - nine).mean() < 4  # ends on seed 9


def test_one_channel_model_writes_an_L_gif(loaded, tmp_path):
    gray = dataclasses.replace(loaded, G=_Stub(channels=1),
                               config=loaded.config.replace(channels=1))
    walk.interpolate(gray, [0, 1], tmp_path / "g.gif", 4, device=CPU)
    with Image.open(tmp_path / "g.gif") as im:
        assert im.mode == "L" and im.n_frames == 4


# --- PNG -------------------------------------------------------------------------------------------

def test_png_grid_has_a_row_per_pair_from_seed_to_seed_exactly(loaded, tmp_path):
    out = tmp_path / "walk.png"
    result = walk.interpolate(loaded, [1, 2, 3], out, 15, device=CPU)
    res, columns, rows = loaded.config.resolution, 6, 3  # 15 // 3 + 1 images a row, 3 pairs
    cell = res + GRID_PADDING
    assert (result["width"], result["height"]) == (columns * cell + GRID_PADDING,
                                                   rows * cell + GRID_PADDING)
    assert result["frames"] == rows * columns and result["format"] == "png"
    grid = np.asarray(Image.open(out))
    assert grid.shape == (result["height"], result["width"], 3)

    def cell_at(row: int, col: int) -> np.ndarray:
        y, x = GRID_PADDING + row * cell, GRID_PADDING + col * cell
        return grid[y:y + res, x:x + res]

    seed_images = images_of(loaded, [1, 2, 3]).permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    # slerp at t = 0 and t = 1 is the latent itself: byte for byte each seed's own image
    for row, (start, end) in enumerate([(0, 1), (1, 2), (2, 0)]):  # the last row closes the loop
        assert np.array_equal(cell_at(row, 0), seed_images[start])
        assert np.array_equal(cell_at(row, columns - 1), seed_images[end])
        assert not np.array_equal(cell_at(row, 2), seed_images[start])  # it moves in between


def test_png_grid_without_loop_and_capped_columns(loaded, tmp_path):
    result = walk.interpolate(loaded, [1, 2, 3], tmp_path / "w.png", 600, device=CPU, loop=False,
                              scale=2)
    cell = 2 * loaded.config.resolution + GRID_PADDING
    assert result["frames"] == 2 * walk.GRID_COLUMNS
    assert (result["width"], result["height"]) == (walk.GRID_COLUMNS * cell + GRID_PADDING,
                                                   2 * cell + GRID_PADDING)


# --- MP4 -------------------------------------------------------------------------------------------

def test_mp4_without_ffmpeg_is_a_one_line_error(loaded, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    with pytest.raises(ConfigError) as e:
        walk.interpolate(loaded, [1, 2], tmp_path / "sub" / "walk.mp4", device=CPU)
    message = str(e.value)
    assert len(message.splitlines()) == 1
    assert "ffmpeg is not on PATH" in message and "walk.gif" in message
    assert not (tmp_path / "sub").exists()  # refused before anything was made


# with the real ffmpeg: what players see (ffprobe), and the first frame decoded back
needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="ffmpeg/ffprobe are not on PATH: the MP4 tests need the real encoder (apt-get install "
           "ffmpeg; .ci/run installs it)")


def probe(path: Path) -> dict:
    """The video stream as ffprobe reads it, every frame decoded and counted."""
    done = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                           "-show_entries", "stream=codec_name,pix_fmt,width,height,r_frame_rate,"
                           "nb_read_frames:format=format_name", "-of", "json", str(path)],
                          capture_output=True, text=True, check=True)
    info = json.loads(done.stdout)
    [stream] = info["streams"]
    return {**stream, "format": info["format"]["format_name"]}


def first_frame(path: Path, side: int) -> np.ndarray:
    """The video's first frame, decoded to RGB (side, side, 3)."""
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f",
                          "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(side, side, 3).astype(np.int16)


class _Pattern(nn.Module):
    """A generator whose image is a smooth colour pattern set by the latent, `size` pixels square:
    what H.264 keeps well, and one seed's image far from another's."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        ramp = torch.linspace(-1, 1, self.size)
        y, x = ramp.view(1, -1, 1), ramp.view(1, 1, -1)
        return torch.stack([torch.tanh(z[:, k, None, None] * x + z[:, k + 3, None, None] * y)
                            for k in range(3)], dim=1)


def patterned(loaded: LoadedGenerator, size: int) -> LoadedGenerator:
    return dataclasses.replace(loaded, G=_Pattern(size),
                               config=loaded.config.replace(resolution=size, channels=3))


def as_hwc(images: torch.Tensor, scale: int = 1) -> np.ndarray:
    return walk.upscale(images, scale).permute(0, 2, 3, 1).numpy().astype(np.int16)  # (N, H, W, C)


@needs_ffmpeg
@pytest.mark.parametrize(("size", "scale", "side"), [(28, 1, 28), (7, 3, 22)],
                         ids=["28x28", "21x21 padded to even"])
def test_mp4_is_h264_yuv420p_and_its_first_frame_is_the_first_seeds_image(loaded, tmp_path, size,
                                                                          scale, side):
    model = patterned(loaded, size)
    out = tmp_path / "walk.mp4"
    result = walk.interpolate(model, [1, 2, 3], out, 9, device=CPU, fps=12, scale=scale)
    assert (result["width"], result["height"], result["frames"]) == (side, side, 9)
    assert probe(out) == {"codec_name": "h264", "pix_fmt": "yuv420p", "width": side,
                          "height": side, "r_frame_rate": "12/1", "nb_read_frames": "9",
                          "format": "mov,mp4,m4a,3gp,3g2,mj2"}
    data = out.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # faststart: playable while it downloads
    frame, image = first_frame(out, side), size * scale
    one, two = as_hwc(images_of(model, [1, 2]), scale)
    # H.264's loss (mostly yuv420p's colour at half resolution, on the blocks of --scale), far
    # below the distance to another seed's image (about 65)
    assert np.abs(frame[:image, :image] - one).mean() < 10
    assert np.abs(frame[:image, :image] - two).mean() > 40
    if side > image:
        assert frame[image:].mean() < 20 and frame[:, image:].mean() < 20  # the padding: black
    assert sorted(p.name for p in tmp_path.iterdir()) == ["walk.mp4"]  # no temp left


@needs_ffmpeg
def test_sample_interpolate_writes_an_mp4_with_the_asked_frames_fps_and_size(trained_run, loaded):
    result = invoke("sample", "--interpolate", "--seeds", "1,2", "--frames", "6", "--fps", "5",
                    "--scale", "2", "walk.mp4", "--ckpt", trained_run, "--json")
    assert result.exit_code == 0, result.output
    side = 2 * loaded.config.resolution
    doc = json.loads(result.stdout)
    assert (doc["format"], doc["frames"], doc["width"], doc["height"]) == ("mp4", 6, side, side)
    info = probe(Path("walk.mp4"))
    assert (info["codec_name"], info["pix_fmt"], info["r_frame_rate"], info["nb_read_frames"],
            info["width"], info["height"]) == ("h264", "yuv420p", "5/1", "6", side, side)
    [seed_one] = as_hwc(images_of(loaded, [1]), 2)
    assert np.abs(first_frame(Path("walk.mp4"), side) - seed_one).mean() < 4


@needs_ffmpeg
def test_mp4_when_ffmpeg_dies_mid_write_is_one_line_and_the_old_file_stays(loaded, tmp_path):
    """The real ffmpeg killed part-way through its file (here by a file size limit, SIGXFSZ, as
    an out-of-memory kill would): a one-line error saying so, OUT as it was, no temp left."""
    out = tmp_path / "walk.mp4"
    out.write_bytes(b"old")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))  # ffmpeg inherits it
    try:
        with pytest.raises(walk.FfmpegError) as e:
            walk.interpolate(patterned(loaded, 64), [1, 2], out, 8, device=CPU)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert str(e.value) == ("ffmpeg could not write walk.mp4: it was killed by SIGXFSZ (File size "
                            "limit exceeded); write walk.gif instead, or check the ffmpeg install")
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["walk.mp4"]


def fake_ffmpeg(bin_dir: Path, script: str) -> Path:
    bin_dir.mkdir()
    path = bin_dir / "ffmpeg"
    path.write_text("#!/bin/bash\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_mp4_ffmpeg_failure_is_one_line_with_its_last_stderr_line(loaded, tmp_path, monkeypatch):
    """A stand-in ffmpeg: one built without libx264 (conda's LGPL build), which Debian's is not."""
    fake_ffmpeg(tmp_path / "bin", 'cat > /dev/null\necho "some banner" >&2\n'
                                  'echo "Unknown encoder \'libx264\'" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "walk.mp4"
    out.write_text("old")
    with pytest.raises(walk.FfmpegError) as e:
        walk.interpolate(loaded, [1, 2], out, 4, device=CPU)
    assert str(e.value) == ("ffmpeg could not write walk.mp4: Unknown encoder 'libx264'; write "
                            "walk.gif instead, or check the ffmpeg install")
    assert out.read_text() == "old"  # the old file stays; no temp left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "walk.mp4"]


def test_an_ffmpeg_that_cannot_run_is_a_one_line_error(loaded, tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    broken = tmp_path / "bin" / "ffmpeg"
    broken.write_bytes(b"\x00not a program")  # executable, but no format the kernel runs
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(walk.FfmpegError) as e:
        walk.interpolate(loaded, [1, 2], tmp_path / "walk.mp4", 4, device=CPU)
    assert str(e.value) == (f"cannot run {broken}: Exec format error; reinstall ffmpeg, or write a "
                            ".gif instead")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]


def test_mp4_frames_are_padded_to_even_rgb():
    gray = torch.full((2, 1, 3, 5), 7, dtype=torch.uint8)  # (N, C, H, W), odd sizes
    frames = walk._rgb(gray, 6, 4)
    assert frames.shape == (2, 4, 6, 3)
    assert (frames[:, :3, :5] == 7).all() and (frames[:, 3] == 0).all() and (frames[:, :, 5] == 0).all()


# --- classes ----------------------------------------------------------------------------------

class _Stub(nn.Module):
    """A generator whose image shows its class: every pixel is c / 10 (0 without a class);
    records the classes it was asked for."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.channels, self.classes = channels, []

    def forward(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        if c is not None:
            self.classes += c.tolist()
        value = (c.float() / 10 if c is not None else z[:, 0].tanh())
        return value.view(-1, 1, 1, 1).expand(len(z), self.channels, 4, 4)


def conditional(loaded: LoadedGenerator) -> LoadedGenerator:
    config = loaded.config.replace(conditional=True, classes=("a", "b", "c"),
                                 resolution=4)
    return dataclasses.replace(loaded, G=_Stub(), config=config)


def test_frames_take_the_class_of_their_segments_start_seed(loaded, tmp_path):
    model = conditional(loaded)
    walk.interpolate(model, [4, 5, 9], tmp_path / "c.gif", 6, device=CPU)
    assert model.G.classes == [1, 1, 2, 2, 0, 0]  # seed mod 3, as ganctl sample draws them
    model.G.classes.clear()
    walk.interpolate(model, [4, 5, 9], tmp_path / "c.png", 4, device=CPU, loop=False)
    # 3 images a row (4 // 2 + 1): start, middle in the start seed's class, end in the end seed's
    assert model.G.classes == [1, 1, 2, 2, 2, 0]


def test_one_class_for_every_frame(loaded, tmp_path):
    model = conditional(loaded)
    walk.interpolate(model, [4, 5], tmp_path / "c.gif", 4, device=CPU, class_="c")
    assert model.G.classes == [2, 2, 2, 2]
    with pytest.raises(ConfigError, match="unknown class"):
        walk.interpolate(model, [4, 5], tmp_path / "d.gif", 4, device=CPU, class_="z")
    with pytest.raises(ConfigError, match="unconditional"):
        walk.interpolate(loaded, [4, 5], tmp_path / "e.gif", 4, device=CPU, class_=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.gif"]


# --- bad requests -----------------------------------------------------------------------------

@pytest.mark.parametrize(("seeds", "name", "kwargs", "fragment"), [
    ([1], "w.gif", {}, "two different seeds or more, got 1"),
    ([3, 3, 3], "w.gif", {}, "two different seeds or more, got only seed 3"),
    ([1, 2], "w.gif", {"frames": 1}, "frames must be a whole number from 2 to 10000"),
    ([1, 2], "w.gif", {"frames": 10_001}, "from 2 to 10000"),
    ([1, 2], "w.gif", {"frames": 2.5}, "frames must be"),
    ([1, 2, 3, 4], "w.gif", {"frames": 3}, "at least 4 frames"),
    ([1, 2], "w.gif", {"fps": 0}, "fps must be"),
    ([1, 2], "w.gif", {"scale": 65}, "scale must be"),
    ([1, 2], "w.jpg", {}, ".gif (animation), .mp4 (video, needs ffmpeg) or .png"),
    ([1, -2], "w.gif", {}, "seed -2"),
    ([1, 2], "w.gif", {"truncation": -1.0}, "truncation must be"),
])
def test_bad_requests_are_one_line_config_errors(loaded, tmp_path, seeds, name, kwargs, fragment):
    with pytest.raises(ConfigError) as e:
        walk.interpolate(loaded, seeds, tmp_path / name, device=CPU, **kwargs)
    assert fragment in str(e.value) and len(str(e.value).splitlines()) == 1
    assert list(tmp_path.iterdir()) == []

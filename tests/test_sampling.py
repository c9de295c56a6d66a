"""Issue 13's `ganctl sample`: seeds, truncation, classes, --no-ema, grids and single images in
PNG, JPEG and WebP, upscaling; the determinism that makes an image depend on its seed alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, assert_one_line_error, invoke
from PIL import Image

from ganctl import rundir
from ganctl.errors import ConfigError
from ganctl.imagefiles import GRID_PADDING, GridShape, make_grid
from ganctl.sample import generate, load_generator, sample_images

CPU = torch.device("cpu")


@pytest.fixture
def run(workdir) -> Path:
    assert invoke("train", *TINY, "--out", "r").exit_code == 0
    return Path("r")


@pytest.fixture
def cond(workdir) -> Path:
    assert invoke("train", *TINY, "--conditional", "--out", "c").exit_code == 0
    return Path("c")


def pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def cell(grid: np.ndarray, i: int, nrow: int, size: int = 32) -> np.ndarray:
    """Image i of a grid written with nrow images a row."""
    r, k = divmod(i, nrow)
    y, x = GRID_PADDING + r * (size + GRID_PADDING), GRID_PADDING + k * (size + GRID_PADDING)
    return grid[y:y + size, x:x + size]


def sample(*args: object):
    result = invoke("sample", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- seeds -------------------------------------------------------------------------------------

def test_a_seeds_image_is_the_same_alone_in_a_batch_of_3_and_of_64(run):
    sample("-n", "1", "alone.png", "--seed", "5", "--ckpt", run)
    sample("--seeds", "4-6", "three.png", "--ckpt", run, "--nrow", "3", "--batch-size", "2")
    sample("-n", "64", "many.png", "--ckpt", run, "--nrow", "8")
    alone = pixels("alone.png")
    assert alone.shape == (32, 32, 3)  # one image: no border
    assert np.array_equal(cell(pixels("three.png"), 1, 3), alone)
    assert np.array_equal(cell(pixels("many.png"), 5, 8), alone)


def test_seeds_take_ranges_and_lists(run):
    doc = sample("--seeds", "3,0-1,7", "g.png", "--ckpt", run, "--nrow", "4")
    assert doc["n"] == 4 and doc["seeds"] == "3,0-1,7"
    one = sample("-n", "1", "s7.png", "--seed", "7", "--ckpt", run)
    assert np.array_equal(cell(pixels("g.png"), 3, 4), pixels("s7.png"))
    assert one["width"] == one["height"] == 32


@pytest.mark.parametrize("seeds", ["5-2", "a", "1,,2", "-3", "0-99999999", "\uff13", "\u0663"])
def test_bad_seeds_are_a_bad_command_line(run, seeds):
    """A malformed --seeds is a bad command line (exit 2), checked before the checkpoint is
    read; only ASCII digits are seeds (full-width and Arabic-Indic ones are not)."""
    result = invoke("sample", "--seeds", seeds, "x.png", "--ckpt", "no-such-run")
    assert_one_line_error(result, 2, "Invalid value for --seeds", "write seeds like 0-63,100")
    assert not Path("x.png").exists()


def test_seeds_and_n_exclude_each_other(run):
    result = invoke("sample", "--seeds", "1-3", "-n", "3", "x.png", "--ckpt", run)
    assert result.exit_code == 2 and "--seeds" in result.stderr


# --- truncation and classes ------------------------------------------------------------------------

def test_truncation_narrows_the_samples_and_zero_gives_one_image(run):
    loaded = load_generator(rundir.locate(str(run), print), CPU)
    spread = []
    for psi in (2.0, 1.0, 0.5, 0.0):
        images, _ = sample_images(loaded, list(range(32)), CPU, truncation=psi)
        spread.append(images.float().std(dim=0).mean().item())  # per-pixel std across seeds
    assert spread[0] > spread[1] > spread[2] > spread[3] == 0.0
    sample("-n", "4", "t0.png", "--truncation", "0", "--ckpt", run, "--nrow", "4")
    grid = pixels("t0.png")
    assert all(np.array_equal(cell(grid, i, 4), cell(grid, 0, 4)) for i in range(4))


@pytest.mark.parametrize("psi", ["-1", "nan"])
def test_bad_truncation_is_a_bad_command_line(run, psi):
    result = invoke("sample", "-n", "2", "x.png", "--truncation", psi, "--ckpt", "no-such-run")
    assert_one_line_error(result, 2, "Invalid value for --truncation",
                          "truncation must be a finite number from 0 up, like 0.7")
    assert "None" not in result.stderr  # the Python API's words are not the command line's


def test_class_on_an_unconditional_model_is_an_error(run):
    for value in ("1", "all", "circle"):
        assert_one_line_error(invoke("sample", "-n", "2", "x.png", "--class", value, "--ckpt", run),
                              1, "unconditional")


def test_class_by_name_or_index_and_all_gives_a_row_per_class(cond):
    sample("-n", "3", "by_name.png", "--class", "square", "--ckpt", cond, "--nrow", "3")
    sample("-n", "3", "by_index.png", "--class", "1", "--ckpt", cond, "--nrow", "3")
    assert np.array_equal(pixels("by_name.png"), pixels("by_index.png"))
    doc = sample("-n", "3", "all.png", "--class", "all", "--ckpt", cond)
    assert doc["n"] == 9 and (doc["width"], doc["height"]) == (3 * 34 + 2, 3 * 34 + 2)
    assert np.array_equal(cell(pixels("all.png"), 3, 3), cell(pixels("by_name.png"), 0, 3))
    assert_one_line_error(invoke("sample", "-n", "2", "x.png", "--class", "hexagon", "--ckpt", cond),
                          1, "unknown class 'hexagon'", "circle")


# --- files ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,fmt", [("g.png", "PNG"), ("g.jpg", "JPEG"), ("g.jpeg", "JPEG"),
                                      ("g.webp", "WEBP")])
def test_grids_in_each_format_into_a_folder_made_for_them(run, name, fmt):
    doc = sample("-n", "4", f"new/folder/{name}", "--ckpt", run)
    with Image.open(f"new/folder/{name}") as image:
        assert image.format == fmt and image.size == (doc["width"], doc["height"]) == (70, 70)


def test_an_unknown_format_is_refused_before_anything_is_drawn(run):
    # a bad command line (exit 2), found from OUT's name before the checkpoint is read
    assert_one_line_error(invoke("sample", "-n", "2", "x.bmp", "--ckpt", run), 2, ".png, .jpg")


def test_scale_and_nrow(run):
    sample("-n", "1", "one.png", "--ckpt", run)
    doc = sample("-n", "1", "big.png", "--scale", "4", "--ckpt", run)
    assert (doc["width"], doc["height"]) == (128, 128)
    big, one = pixels("big.png"), pixels("one.png")
    assert np.array_equal(big[::4, ::4], one) and np.array_equal(big[3::4, 3::4], one)
    doc = sample("-n", "6", "row.png", "--nrow", "6", "--ckpt", run)
    assert (doc["width"], doc["height"]) == (6 * 34 + 2, 34 + 2)


def test_no_ema_samples_g_itself(run):
    sample("-n", "1", "ema.png", "--ckpt", run)
    sample("-n", "1", "g.png", "--ckpt", run, "--no-ema")
    assert not np.array_equal(pixels("ema.png"), pixels("g.png"))


def test_latest_and_best_are_accepted(workdir):
    assert invoke("train", *TINY).exit_code == 0
    assert sample("-n", "1", "l.png", "--ckpt", "latest")["step"] == 4
    assert_one_line_error(invoke("sample", "-n", "1", "b.png", "--ckpt", "best"), 1, "best")


def test_one_file_of_too_many_images_points_at_out_dir(run):
    assert_one_line_error(invoke("sample", "-n", "5000", "x.png", "--ckpt", run), 1, "--out-dir")


def test_out_and_out_dir_exclude_each_other(run):
    assert invoke("sample", "x.png", "--out-dir", "d", "--ckpt", run).exit_code == 2
    assert invoke("sample", "--ckpt", run).exit_code == 2


# --- bulk export, interpolation and export from the command line ---------------------------------

def test_bulk_export_stopped_by_sigterm_then_rerun_ends_with_exactly_n_files(workdir):
    """A kill in the middle leaves only whole files; the rerun writes the rest."""
    import signal  # noqa: PLC0415
    import time  # noqa: PLC0415

    from helpers import start  # noqa: PLC0415
    assert invoke("train", *TINY, "--g-width", "32", "--out", "r").exit_code == 0
    n = 3000
    proc = start("sample", "-n", n, "--out-dir", "out", "--ckpt", "r", "--batch-size", "64",
                 "--device", "cpu", cwd=workdir)
    deadline = time.monotonic() + 60
    while len(list(Path("out").glob("seed*.png"))) < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    first = sorted(Path("out").glob("seed*.png"))
    assert 200 <= len(first) < n
    # the stop says how far it got, to the image, and how to go on
    assert (f"stopped by SIGTERM with {len(first):,} of {n:,} images in out; run the same "
            "command again to finish") in err
    for path in first:  # every file there is whole
        with Image.open(path) as image:
            image.load()
    doc = sample("-n", n, "--out-dir", "out", "--ckpt", "r", "--batch-size", "64")
    assert (doc["count"], doc["skipped"], doc["written"]) == (n, len(first), n - len(first))
    files = sorted(p.name for p in Path("out").iterdir())
    assert len([f for f in files if f.startswith("seed")]) == n
    assert not [f for f in files if ".tmp" in f]
    assert json.loads(Path("out/manifest.json").read_text())["status"] == "complete"


def test_a_bulk_export_trains_as_a_dataset_and_matches_the_grid(cond):
    doc = sample("--seeds", "0-11", "--out-dir", "aug", "--ckpt", cond)
    assert doc["count"] == 12
    sample("-n", "1", "s5.png", "--seed", "5", "--ckpt", cond)
    [five] = Path("aug").glob("*/seed0000000005.png")
    assert np.array_equal(pixels(five), pixels("s5.png"))
    assert (Path("aug/labels.csv").read_text().splitlines()[0]
            == "file,seed,class_index,class_name")
    result = invoke("train", "--dataset", "aug", "--conditional", *TINY, "--steps", "2",
                    "--out", "again")
    assert result.exit_code == 0, result.output


def test_interpolation_gif_from_the_command_line(run):
    doc = sample("--interpolate", "--seeds", "1,2,3", "--frames", "12", "walk.gif", "--ckpt", run,
                 "--scale", "2")
    assert doc["frames"] == 12
    with Image.open("walk.gif") as gif:
        assert gif.size == (64, 64) and 1 < gif.n_frames <= 12


def test_interpolation_png_says_its_rows_and_when_the_row_is_cut(run):
    result = invoke("sample", "--interpolate", "--seeds", "1,2,3", "--frames", "12", "--no-loop",
                    "w.png", "--ckpt", run)
    assert result.exit_code == 0, result.output
    assert ("a grid of 2 rows (one per pair of seeds 1, 2, 3) of 7 images each (240x70 px)"
            in result.stdout)
    doc = sample("--interpolate", "--seeds", "1,2", "--frames", "600", "w.png", "--ckpt", run)
    assert (doc["rows"], doc["columns"], doc["columns_asked"]) == (2, 16, 301)
    result = invoke("sample", "--interpolate", "--seeds", "1,2", "--frames", "600", "w.png",
                    "--ckpt", run)
    assert ("a PNG row holds at most 16 images, not the 301 that --frames 600 asks for: a .gif "
            "or .mp4 shows every frame") in result.stdout
    with Image.open("w.png") as grid:
        assert grid.size == (16 * 34 + 2, 2 * 34 + 2)


def test_torchscript_export_from_the_command_line(run):
    result = invoke("export", run, "g.pt", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["max_abs_diff"] <= 1e-4 and doc["checked_batch_sizes"] == [4, 7, 1]
    loaded = torch.jit.load("g.pt")
    assert tuple(loaded(torch.zeros(5, doc["z_dim"])).shape) == (5, 3, 32, 32)


def test_export_takes_its_format_from_the_name_and_refuses_a_mismatch(run):
    pytest.importorskip("onnxruntime")
    doc = sample_json("export", run, "g.onnx")
    assert doc["format"] == "onnx" and doc["z_dim"] == 100
    result = invoke("export", run, "g2.onnx", "--format", "torchscript")
    assert result.exit_code == 2 and "named for onnx" in result.stderr
    assert not Path("g2.onnx").exists()
    result = invoke("export", run, "g.pt", "--format", "onnx")
    assert result.exit_code == 2 and "g.pt is named for torchscript but --format is onnx" in result.stderr
    # a name that says no format takes --format's (it was 'named for torchscript')
    assert sample_json("export", run, "g.bin", "--format", "onnx")["format"] == "onnx"


@pytest.mark.parametrize(("args", "fragment"), [
    (["-n", "4", "x.png", "--format", "jpg"], "--format is for --out-dir"),
    (["-n", "4", "--out-dir", "d", "--format", "bmp"], "'bmp' is not one of png, jpg, webp, npz"),
    (["-n", "4", "--out-dir", "d", "--scale", "4"], "--out-dir writes each image at the model's size"),
    (["-n", "4", "--out-dir", "d", "--nrow", "2"], "--out-dir writes each image"),
    (["--interpolate", "--seeds", "1,2", "w.png", "--nrow", "4"], "leave --nrow out"),
    (["--interpolate", "--seeds", "1,2", "w.gif", "--class", "all"], "--class all draws a grid"),
    (["-n", "4", "--out-dir", "d", "--class", "all"], "--class all draws a grid"),
    (["-n", "4", "x.gif"], "x.gif: .gif and .mp4 are for --interpolate"),
    (["--seed", "0", "--seeds", "1-3", "x.png"], "--seeds names the seeds itself"),
])
def test_an_option_of_another_mode_is_a_bad_command_line_not_ignored(run, args, fragment):
    result = invoke("sample", *args, "--ckpt", run)
    assert_one_line_error(result, 2, fragment)
    assert not Path("x.png").exists() and not Path("d").exists() and not Path("w.png").exists()


def test_out_never_replaces_a_file_of_another_kind(run):
    """A run's metrics, config or checkpoint named as OUT by mistake is refused; an image over
    an image, or a model over a model, is replaced."""
    metrics = run / "metrics.jsonl"
    before = metrics.read_bytes()
    assert_one_line_error(invoke("export", run, metrics), 1, "is not a TorchScript file")
    (run / "g.onnx").write_text("not a model")
    assert_one_line_error(invoke("export", run, run / "g.onnx"), 1, "is not an ONNX file")
    ckpt = run / "checkpoints" / "step-000000004.safetensors"
    shutil.copy(ckpt, "ck.png")
    assert_one_line_error(invoke("sample", "-n", "1", "ck.png", "--ckpt", run), 1,
                          "ck.png exists and is not an image")
    assert metrics.read_bytes() == before and Path("ck.png").read_bytes() == ckpt.read_bytes()
    assert invoke("sample", "-n", "1", "again.png", "--ckpt", run).exit_code == 0
    assert invoke("sample", "-n", "2", "again.png", "--ckpt", run).exit_code == 0  # image over image
    assert invoke("export", run, "g.pt").exit_code == 0
    assert invoke("export", run, "g.pt").exit_code == 0


def test_interpolation_requests_are_checked_before_the_checkpoint(run):
    for args, fragment in ((["--seeds", "1"], "two different seeds"),
                           (["--seeds", "1-5", "--frames", "3"], "3 frames cannot pass 5 seeds")):
        result = invoke("sample", "--interpolate", *args, "w.gif", "--ckpt", "no-such-run")
        assert_one_line_error(result, 2, fragment)


def test_truncation_must_be_finite(run):
    result = invoke("sample", "-n", "2", "x.png", "--truncation", "inf", "--ckpt", run)
    assert_one_line_error(result, 2, "truncation must be a finite number")


def test_export_without_out_says_so(run):
    for args in ([str(run)], ["latest"]):
        assert_one_line_error(invoke("export", *args), 2, "is what to export; give OUT")
    assert_one_line_error(invoke("export", run, "g.pt", "--format", "tflite"), 2,
                          "'tflite' is not torchscript or onnx")


def test_options_of_another_mode_are_refused(run):
    assert invoke("sample", "--seeds", "1,2", "--frames", "10", "x.png", "--ckpt", run).exit_code == 2
    assert invoke("sample", "--interpolate", "--out-dir", "d", "--ckpt", run).exit_code == 2
    assert not Path("x.png").exists() and not Path("d").exists()


def sample_json(*args: object) -> dict:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_export_never_writes_over_a_checkpoint(run):
    ckpt = run / "checkpoints" / "step-000000004.safetensors"
    before = ckpt.read_bytes()
    assert_one_line_error(invoke("export", ckpt), 2, "is what to export; give OUT")
    assert_one_line_error(invoke("export", run, ckpt), 1, "never over a checkpoint")
    assert ckpt.read_bytes() == before


def test_out_may_not_be_a_link_or_a_folder(run):
    Path("target.txt").write_text("keep")
    Path("link.png").symlink_to("target.txt")
    assert_one_line_error(invoke("sample", "-n", "2", "link.png", "--ckpt", run), 1, "symbolic link")
    assert_one_line_error(invoke("export", run, "link.png"), 1, "symbolic link")
    assert Path("link.png").is_symlink() and Path("target.txt").read_text() == "keep"
    Path("folder.png").mkdir()
    assert_one_line_error(invoke("sample", "-n", "2", "folder.png", "--ckpt", run), 1,
                          "not a regular file")


def test_a_grid_too_big_for_memory_is_refused_before_drawing(run):
    assert_one_line_error(invoke("sample", "-n", "4096", "--scale", "64", "big.png", "--ckpt", run),
                          1, "GB of pixels", "--out-dir")


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "npz"])
def test_a_rerun_redoes_files_cut_or_damaged_by_hand(run, fmt):
    sample("-n", "6", "--out-dir", "x", "--format", fmt, "--ckpt", run)
    files = sorted(p for p in Path("x").iterdir() if p.suffix == f".{fmt}")
    whole = files[0].read_bytes()
    files[0].write_bytes(whole[: len(whole) // 2])  # cut short
    if len(files) > 1:
        files[1].write_bytes(b"junk")
    doc = sample("-n", "6", "--out-dir", "x", "--format", fmt, "--ckpt", run)
    assert doc["written"] == min(len(files), 2) * (6 // len(files))
    assert files[0].read_bytes() == whole


def test_a_fifo_in_place_of_the_manifest_is_refused_not_waited_on(run):
    import os  # noqa: PLC0415
    Path("x").mkdir()
    os.mkfifo("x/manifest.json")
    assert_one_line_error(invoke("sample", "-n", "2", "--out-dir", "x", "--ckpt", run), 1,
                          "not a ganctl export manifest")


def test_a_grid_longer_than_jpeg_or_webp_allow_is_refused_before_drawing(run):
    """libjpeg takes at most 65500 px a side, WebP 16383: an 'unexpected ValueError' and a
    broken-stream error before; now one line naming the limit, and a PNG of it works."""
    assert_one_line_error(invoke("sample", "-n", "600", "--nrow", "1", "tall.webp", "--ckpt", run), 1,
                          "tall.webp: a grid of 600 images (1 a row, padding 2) is 36x20402 px, more "
                          "than WEBP holds (16383 px a side); use .png")
    assert_one_line_error(invoke("sample", "-n", "2000", "--nrow", "1", "tall.jpg", "--ckpt", run), 1,
                          "more than JPEG holds (65500 px a side)")
    assert not Path("tall.webp").exists() and not Path("tall.jpg").exists()
    assert sample("-n", "600", "--nrow", "1", "tall.png", "--ckpt", run)["height"] == 20402
    assert sample("-n", "600", "--nrow", "30", "wide.webp", "--ckpt", run)["width"] == 30 * 34 + 2


def test_make_grid_refuses_a_grid_past_one_image_before_allocating_it():
    images = torch.zeros((2, 3, 4, 4), dtype=torch.uint8)
    with pytest.raises(ConfigError) as e:  # was torch's 'Storage size calculation overflowed'
        make_grid(images, padding=10**9)
    message = str(e.value)
    assert "is 3000000008x2000000004 px, 18000000084.0 GB of pixels, more than one image holds" in message
    assert "\n" not in message


@pytest.mark.parametrize("nrow", [None, 1, 4, 100])
def test_the_grid_shape_checked_is_the_grid_made(nrow):
    for n in range(1, 30):
        for padding in (0, 3):
            shape = GridShape.of(n, 1, 5, 7, padding, nrow)
            grid = make_grid(torch.ones((n, 1, 5, 7), dtype=torch.uint8), padding, nrow)
            assert grid.shape == (shape.height, shape.width, 1) and shape.size == grid.numel()
            assert int(grid.sum()) == n * 35 and shape.rows * shape.cols >= n > (shape.rows - 1) * shape.cols


def test_running_out_of_memory_while_generating_says_to_lower_the_batch_size():
    class Hungry(torch.nn.Module):
        def forward(self, z, c):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore lines")

    G = Hungry().train()
    with pytest.raises(ConfigError) as e:
        generate(G, torch.zeros(5, 8), CPU, batch_size=4)
    assert str(e.value).startswith("out of memory on cpu generating 4 images at a time; lower the "
                                   "batch size (--batch-size, batch_size=)")
    assert G.training  # its mode is given back

"""`ganctl sample`: a grid or one image (seeds, truncation, classes, formats, --scale, --nrow,
--no-ema), --out-dir and --interpolate from the command line, and the checks of its options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CPU, TINY, assert_one_line_error, invoke
from PIL import Image

from ganctl import rundir
from ganctl.imagefiles import GRID_PADDING
from ganctl.sample import load_generator, sample_images

# --- a grid or one image --------------------------------------------------------------------------

def test_sample_64_is_the_seed_8x8_grid(trained_run, workdir):
    result = invoke("sample", "-n", "64", "out.png")
    assert result.exit_code == 0, result.output
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    assert f"using newest checkpoint {ckpt.relative_to(workdir)}" in result.stderr
    image = Image.open(workdir / "out.png")
    # 8 images of 32 px per side with 2 px gaps around and between: 8 * 34 + 2
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (274, 274))


def test_grid_shape_for_n_not_square(trained_run, workdir):
    assert invoke("sample", "-n", "10", "ten.png", "--ckpt", trained_run).exit_code == 0
    assert Image.open(workdir / "ten.png").size == (4 * 34 + 2, 3 * 34 + 2)  # 4 per row, 3 rows


def test_same_seed_same_bytes_other_seed_other_bytes(trained_run, workdir):
    for name, seed in (("a.png", 7), ("b.png", 7), ("c.png", 8)):
        assert invoke("sample", "-n", "16", name, "--seed", seed).exit_code == 0
    a, b, c = ((workdir / n).read_bytes() for n in ("a.png", "b.png", "c.png"))
    assert a == b and a != c


def test_an_image_depends_on_its_seed_not_its_batch(trained_run, workdir):
    """Seed 7 is image 0 of a grid from --seed 7 and image 3 of a grid from --seed 4."""
    assert invoke("sample", "-n", "1", "one.png", "--seed", 7).exit_code == 0
    assert invoke("sample", "-n", "4", "four.png", "--seed", 4).exit_code == 0
    one = torch.from_numpy(np.array(Image.open(workdir / "one.png")))
    four = torch.from_numpy(np.array(Image.open(workdir / "four.png")))
    assert one.shape[:2] == (32, 32)  # one image is written alone, without a border
    assert torch.equal(four[36:68, 36:68], one)  # row 1, column 1 of a 2x2 grid


def test_sample_json(trained_run, workdir):
    result = invoke("sample", "-n", "4", "s.png", "--ckpt", trained_run, "--json")
    doc = json.loads(result.stdout)
    assert doc["step"] == 4 and doc["n"] == 4 and doc["out"] == "s.png"
    assert (doc["width"], doc["height"]) == (70, 70)


@pytest.mark.parametrize("out, fragment", [("a-file/x.png", "a-file is a file, not a folder"),
                                           ("a-file/sub/x.png", "a-file is a file, not a folder"),
                                           (".png", ".png is a hidden file's name with no suffix; "
                                                    "name the file like out.png")])
def test_sample_bad_output(trained_run, out, fragment):
    Path("a-file").write_text("a file where a folder would go")
    result = invoke("sample", out)
    assert result.exit_code == 1 and fragment in result.stderr


@pytest.mark.parametrize("out", ["x.bmp", "sub/noext", "x.PNG.txt"])
def test_an_image_name_without_an_image_format_is_a_bad_command_line(workdir, out):
    """Found from OUT alone, before a checkpoint is looked for (there is none here)."""
    result = invoke("sample", out)
    assert result.exit_code == 2 and "must end in .png, .jpg, .jpeg or .webp" in result.stderr


def test_sample_seed_bounds(trained_run):
    assert invoke("sample", "x.png", "--seed", str(2**63)).exit_code == 2
    assert invoke("sample", "-n", "2", "x.png", "--seed", str(2**63 - 1)).exit_code == 2  # runs past
    ok = invoke("sample", "-n", "2", "x.png", "--seed", str(2**63 - 2))
    assert ok.exit_code == 0, ok.output


# --- seeds ----------------------------------------------------------------------------------------

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


# --- truncation and classes -----------------------------------------------------------------------

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


def test_truncation_must_be_finite(run):
    result = invoke("sample", "-n", "2", "x.png", "--truncation", "inf", "--ckpt", run)
    assert_one_line_error(result, 2, "truncation must be a finite number")


def test_class_on_an_unconditional_model_is_an_error(run):
    for value in ("1", "all", "circle"):
        assert_one_line_error(invoke("sample", "-n", "2", "x.png", "--class", value, "--ckpt", run),
                              1, "unconditional")


@pytest.fixture
def cond(workdir) -> Path:
    assert invoke("train", *TINY, "--conditional", "--out", "c").exit_code == 0
    return Path("c")


def test_class_by_name_or_index_and_all_gives_a_row_per_class(cond):
    sample("-n", "3", "by_name.png", "--class", "square", "--ckpt", cond, "--nrow", "3")
    sample("-n", "3", "by_index.png", "--class", "1", "--ckpt", cond, "--nrow", "3")
    assert np.array_equal(pixels("by_name.png"), pixels("by_index.png"))
    doc = sample("-n", "3", "all.png", "--class", "all", "--ckpt", cond)
    assert doc["n"] == 9 and (doc["width"], doc["height"]) == (3 * 34 + 2, 3 * 34 + 2)
    assert np.array_equal(cell(pixels("all.png"), 3, 3), cell(pixels("by_name.png"), 0, 3))
    assert_one_line_error(invoke("sample", "-n", "2", "x.png", "--class", "hexagon", "--ckpt", cond),
                          1, "unknown class 'hexagon'", "circle")


# --- files ----------------------------------------------------------------------------------------

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


def test_a_grid_too_big_for_memory_is_refused_before_drawing(run):
    assert_one_line_error(invoke("sample", "-n", "4096", "--scale", "64", "big.png", "--ckpt", run),
                          1, "GB of pixels", "--out-dir")


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


# --- options of another mode ----------------------------------------------------------------------

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


def test_options_of_another_mode_are_refused(run):
    assert invoke("sample", "--seeds", "1,2", "--frames", "10", "x.png", "--ckpt", run).exit_code == 2
    assert invoke("sample", "--interpolate", "--out-dir", "d", "--ckpt", run).exit_code == 2
    assert not Path("x.png").exists() and not Path("d").exists()


# --- --out-dir ------------------------------------------------------------------------------------

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


# --- --interpolate --------------------------------------------------------------------------------

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


def test_interpolation_requests_are_checked_before_the_checkpoint(run):
    for args, fragment in ((["--seeds", "1"], "two different seeds"),
                           (["--seeds", "1-5", "--frames", "3"], "3 frames cannot pass 5 seeds")):
        result = invoke("sample", "--interpolate", *args, "w.gif", "--ckpt", "no-such-run")
        assert_one_line_error(result, 2, fragment)

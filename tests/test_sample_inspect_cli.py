"""`ganctl sample` and `ganctl inspect` on a trained run."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, image_folder, invoke
from PIL import Image

from ganctl.config import Config
from ganctl.imagefiles import make_grid
from ganctl.models import build_models
from ganctl.sample import latents_from_seeds, to_uint8


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


def test_inspect_json_reports_the_header(trained_run, workdir):
    result = invoke("inspect", trained_run, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    config = json.loads((trained_run / "config.json").read_text())
    assert info["step"] == 4 and info["config"] == config
    assert info["file_size"] == os.path.getsize(ckpt)
    assert info["version"] == __import__("ganctl").__version__ and info["schema"] == 4
    G, D = build_models(Config.from_dict(config))
    assert info["params"] == {"G": sum(p.numel() for p in G.parameters()),
                              "D": sum(p.numel() for p in D.parameters())}
    last = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert info["metrics"] == last
    assert info["created"].endswith("+00:00")


def test_inspect_table_and_default_target(trained_run):
    result = invoke("inspect")
    assert result.exit_code == 0, result.output
    for text in ("step", "params", "loss_D", "dcgan", "step-000000004.safetensors"):
        assert text in result.stdout


def test_inspect_an_older_checkpoint_file(trained_run):
    result = invoke("inspect", trained_run / "checkpoints" / "step-000000002.safetensors",
                    "--json")
    assert json.loads(result.stdout)["step"] == 2


def test_sample_seed_bounds(trained_run):
    assert invoke("sample", "x.png", "--seed", str(2**63)).exit_code == 2
    assert invoke("sample", "-n", "2", "x.png", "--seed", str(2**63 - 1)).exit_code == 2  # runs past
    ok = invoke("sample", "-n", "2", "x.png", "--seed", str(2**63 - 2))
    assert ok.exit_code == 0, ok.output


def test_inspect_shows_class_names(workdir):
    image_folder(workdir / "imgs", 8, classes=2)
    assert invoke("train", *TINY, "--steps", "1", "--dataset", "imgs", "--resolution", "32",
                  "--out", "r").exit_code == 0
    result = invoke("inspect", "r")
    assert result.exit_code == 0 and "c0, c1" in result.stdout
    assert json.loads(invoke("inspect", "r", "--json").stdout)["config"]["classes"] == ["c0", "c1"]


def test_latents_depend_on_seed_only():
    a = latents_from_seeds([3, 4, 5], 8)
    assert torch.equal(a[2], latents_from_seeds([5], 8)[0])
    assert not torch.equal(a[0], a[1])


def test_grid_layout():
    images = torch.stack([torch.full((3, 2, 2), i, dtype=torch.uint8) for i in range(1, 6)])
    grid = make_grid(images, padding=1)  # 5 images: 3 per row, 2 rows
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1, 3)
    assert grid[1, 1].tolist() == [1, 1, 1] and grid[4, 4].tolist() == [5, 5, 5]
    assert grid[4, 7].tolist() == [0, 0, 0]  # the empty sixth cell
    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0, 2.0])).tolist() == [0, 128, 255, 255]

"""`ganctl plot`: the PNG it writes and its errors (the curves themselves: test_plot.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import TINY, assert_one_line_error, invoke
from PIL import Image

from ganctl import api
from ganctl.errors import ConfigError


def test_plot_writes_a_png_of_a_fixed_size(workdir):
    assert invoke("train", *TINY, "--out", "r").exit_code == 0
    result = invoke("plot", "r", "curves-copy.png", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["out"] == "curves-copy.png"
    with Image.open("curves-copy.png") as image:
        assert image.format == "PNG" and image.size == (1200, 800)
    assert_one_line_error(invoke("plot", "nowhere"), 1, "not a ganctl run directory")
    assert invoke("plot", "r", "x.jpg").exit_code == 2


def test_plot_replaces_no_file_that_is_not_an_image(run):
    """OUT.png may be ganctl's own image; a checkpoint named .png, a read-only file or a link
    is refused by the command and by the API alike, and left as it was."""
    ckpt = next(Path("r/checkpoints").glob("*.safetensors"))
    shutil.copy(ckpt, "ck.png")
    before = Path("ck.png").read_bytes()
    assert_one_line_error(invoke("plot", "r", "ck.png"), 1, "ck.png exists and is not an image")
    with pytest.raises(ConfigError, match="ck.png exists and is not an image"):
        api.plot("r", "ck.png")
    assert Path("ck.png").read_bytes() == before
    Path("notes.txt").write_text("mine")
    os.symlink("notes.txt", "link.png")
    assert_one_line_error(invoke("plot", "r", "link.png"), 1, "link.png is a symbolic link")
    assert Path("link.png").is_symlink() and Path("notes.txt").read_text() == "mine"
    assert invoke("plot", "r", "mine.png").exit_code == 0
    assert invoke("plot", "r", "mine.png").exit_code == 0  # its own image it replaces

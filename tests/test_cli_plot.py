"""`ganctl plot`: the PNG it writes and its errors (the curves themselves: test_plot.py)."""

from __future__ import annotations

import json

from helpers import TINY, assert_one_line_error, invoke
from PIL import Image


def test_plot_writes_a_png_of_a_fixed_size(workdir):
    assert invoke("train", *TINY, "--out", "r").exit_code == 0
    result = invoke("plot", "r", "curves-copy.png", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["out"] == "curves-copy.png"
    with Image.open("curves-copy.png") as image:
        assert image.format == "PNG" and image.size == (1200, 800)
    assert_one_line_error(invoke("plot", "nowhere"), 1, "not a ganctl run directory")
    assert invoke("plot", "r", "x.jpg").exit_code == 2

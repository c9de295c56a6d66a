"""Grids of images (ganctl/imagefiles.py): their layout, and a grid's shape checked before it is
allocated."""

from __future__ import annotations

import pytest
import torch

from ganctl.errors import ConfigError
from ganctl.imagefiles import GridShape, make_grid
from ganctl.sample import to_uint8


def test_grid_layout():
    images = torch.stack([torch.full((3, 2, 2), i, dtype=torch.uint8) for i in range(1, 6)])
    grid = make_grid(images, padding=1)  # 5 images: 3 per row, 2 rows
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1, 3)
    assert grid[1, 1].tolist() == [1, 1, 1] and grid[4, 4].tolist() == [5, 5, 5]
    assert grid[4, 7].tolist() == [0, 0, 0]  # the empty sixth cell
    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0, 2.0])).tolist() == [0, 128, 255, 255]


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

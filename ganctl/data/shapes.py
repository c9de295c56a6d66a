"""The built-in dataset: procedurally drawn coloured shapes, generated deterministically.

Each image is one filled, upright circle, square or triangle (random position near the centre,
size and saturated colour) on a dark background of another hue, anti-aliased along its edges;
its shape is its class (CLASSES), so `--conditional` works on it too. Version 1 drew them
smaller, anywhere and rotated: a DCGAN made blobs of them in the demo's 1,500 steps, where it
now draws the three shapes (benchmarks/RESULTS.md).
It needs no download and no extra package, and a DCGAN learns it visibly within a few CPU
minutes, so `ganctl train` with no --dataset shows the whole loop working on a laptop.
"""

from __future__ import annotations

import functools
import math

import torch

SEED = 20161119  # fixed: the dataset is the same for every run and every machine
SIZE = 8192
CHUNK = 256
VERSION = 2  # bump when the drawing changes, so fingerprints (and resume checks) notice
CLASSES = ("circle", "square", "triangle")  # the label of an image is the index of its shape


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(n,) hue/saturation/value in [0, 1] -> (n, 3) RGB in [0, 1]."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + h[:, None] * 6) % 6  # (n, 3)
    ramp = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return v[:, None] - v[:, None] * s[:, None] * ramp


def _coverage(kind: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, size: torch.Tensor,
              resolution: int) -> torch.Tensor:
    """(n,) shape parameters -> (n, 1, R, R) fraction of each pixel the shape covers, the shapes
    upright (a triangle points up, a square sits on an edge).

    Anti-aliased from a signed distance d (in image widths) to the shape's edge:
    coverage = clamp(0.5 - d * R, 0, 1), a one-pixel ramp across the edge.
    """
    t = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution
    y, x = torch.meshgrid(t, t, indexing="ij")  # (R, R)
    u = x[None] - cx[:, None, None]  # (n, R, R) offsets from each shape's centre
    v = y[None] - cy[:, None, None]
    s = size[:, None, None]
    circle = torch.sqrt(u * u + v * v) - s
    square = torch.maximum(u.abs(), v.abs()) - s * 0.8
    # equilateral triangle of circumradius s: its three edges lie at distance s/2
    triangle = torch.stack([
        u * math.cos(a) + v * math.sin(a) - s / 2
        for a in (math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))
    ]).amax(0)
    kinds = kind[:, None, None]
    d = torch.where(kinds == 0, circle, torch.where(kinds == 1, square, triangle))
    return torch.clamp(0.5 - d * resolution, 0, 1)[:, None]  # (n, 1, R, R)


def _kinds(g: torch.Generator, n: int) -> torch.Tensor:
    """The first draw of the dataset's generator: each image's shape, an index into CLASSES."""
    return torch.randint(0, len(CLASSES), (n,), generator=g)


def labels(n: int = SIZE, seed: int = SEED) -> torch.Tensor:
    """(n,) int64 class of each image render(..., n, seed) draws, without drawing them."""
    return _kinds(torch.Generator().manual_seed(seed), n)


@functools.lru_cache(maxsize=1)  # drawn once per process: a rollback or resume draws it again
def render(resolution: int, channels: int, n: int = SIZE, seed: int = SEED) -> torch.Tensor:
    """(n, channels, R, R) uint8 images; the same bytes for the same arguments. The tensor is
    shared by every caller with these arguments: read it, never change it in place."""
    g = torch.Generator().manual_seed(seed)
    kind = _kinds(g, n)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g)

    cx, cy = uniform(0.4, 0.6), uniform(0.4, 0.6)
    size = uniform(0.24, 0.36)
    fg_hue = uniform(0, 1)
    fg = hsv_to_rgb(fg_hue, uniform(0.7, 1.0), uniform(0.8, 1.0))  # (n, 3)
    bg = hsv_to_rgb((fg_hue + uniform(0.25, 0.75)) % 1, uniform(0.3, 0.6), uniform(0.1, 0.3))
    out = torch.empty(n, channels, resolution, resolution, dtype=torch.uint8)
    for i in range(0, n, CHUNK):
        j = slice(i, i + CHUNK)
        alpha = _coverage(kind[j], cx[j], cy[j], size[j], resolution)
        rgb = bg[j, :, None, None] * (1 - alpha) + fg[j, :, None, None] * alpha  # (c, 3, R, R)
        if channels == 1:
            rgb = (rgb * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1, keepdim=True)
        out[j] = (rgb * 255).round().clamp(0, 255).to(torch.uint8)
    return out

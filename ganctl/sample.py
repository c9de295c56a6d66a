"""Latents from seeds, generation, grids and PNG output.

One latent per seed: z for seed s is drawn from its own generator on the CPU, so an image
depends on its seed alone, never on the batch it was generated in or on the device.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from ganctl import checkpoint
from ganctl.config import Config
from ganctl.errors import ConfigError
from ganctl.fsutil import atomic_write
from ganctl.models import build_generator
from ganctl.models.base import num_classes
from ganctl.stored import check_models, stored_config

GRID_PADDING = 2  # pixels between and around the images of a grid
GENERATE_BATCH = 256


def latents_from_seeds(seeds: list[int] | range, z_dim: int) -> torch.Tensor:
    """(n, z_dim) standard normal latents, row i drawn from a generator seeded with seeds[i]."""
    rows = [torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows)


@torch.no_grad()
def labels_for_seeds(seeds: list[int] | range, config: Config) -> torch.Tensor | None:
    """The class a conditional model draws each seed's image for: seed mod the number of
    classes, so consecutive seeds go through every class; None for unconditional models."""
    k = num_classes(config)
    return torch.tensor([int(s) % k for s in seeds], dtype=torch.int64) if k else None


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor, device: torch.device,
             c: torch.Tensor | None = None) -> torch.Tensor:
    """Images for latents z (and classes c) as uint8 (n, C, H, W), generated in eval mode in
    fixed-size chunks."""
    was_training = G.training
    G.eval()
    labels = c.split(GENERATE_BATCH) if c is not None else [None] * len(z.split(GENERATE_BATCH))
    out = [to_uint8(G(chunk.to(device), None if k is None else k.to(device)).cpu())
           for chunk, k in zip(z.split(GENERATE_BATCH), labels, strict=True)]
    G.train(was_training)
    return torch.cat(out)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> [0, 255] uint8."""
    return ((x.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def make_grid(images: torch.Tensor, padding: int = GRID_PADDING) -> torch.Tensor:
    """(n, C, H, W) uint8 -> (H', W', C) uint8 grid, ceil(sqrt(n)) images per row, black gaps."""
    n, c, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.zeros(rows * (h + padding) + padding, cols * (w + padding) + padding, c,
                       dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + k * (w + padding)
        grid[y:y + h, x:x + w] = images[i].permute(1, 2, 0)  # (H, W, C)
    return grid


def png_bytes(grid: torch.Tensor) -> bytes:
    array = grid.numpy()
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def save_grid(images: torch.Tensor, path: Path) -> tuple[int, int]:
    """Write images as a PNG grid atomically; returns the grid's (width, height) in pixels."""
    grid = make_grid(images)
    atomic_write(Path(path), png_bytes(grid))
    return grid.shape[1], grid.shape[0]


@dataclass(frozen=True)
class LoadedGenerator:
    G: nn.Module  # the EMA generator, in eval mode, on the device
    config: Config
    header: checkpoint.Header


def load_generator(header: checkpoint.Header, device: torch.device) -> LoadedGenerator:
    """Rebuild G_ema from a (verified) checkpoint's metadata and load its weights."""
    config = stored_config(header)
    check_models(header, config, ("G_ema",))
    G = build_generator(config)
    checkpoint.load_module(G, checkpoint.load_tensors(header, ("G_ema.",)), "G_ema")
    # the header without the file's bytes: they are not needed once G is loaded
    return LoadedGenerator(G.to(device).eval(), config, dataclasses.replace(header, blob=None))


def sample_grid(header: checkpoint.Header, out: Path, n: int, seed: int,
                device: torch.device) -> dict:
    """Write an n-image grid from a checkpoint to `out`; seeds seed..seed+n-1."""
    if seed + n > 2**63:
        raise ConfigError(f"seeds {seed}..{seed + n - 1} go past 2**63 - 1; use a smaller --seed")
    if out.suffix.lower() != ".png":
        raise ConfigError(f"output {out} must end in .png (sample grids are PNG)")
    if not out.parent.exists():
        raise ConfigError(f"output directory {out.parent} does not exist; create it first")
    loaded = load_generator(header, device)
    z = latents_from_seeds(range(seed, seed + n), loaded.config.z_dim)
    c = labels_for_seeds(range(seed, seed + n), loaded.config)
    try:
        width, height = save_grid(generate(loaded.G, z, device, c), out)
    except OSError as e:
        raise ConfigError(f"cannot write {out}: {e.strerror}") from None
    return {"out": str(out), "checkpoint": str(header.path), "step": loaded.header.step, "n": n,
            "seed": seed, "width": width, "height": height, "device": str(device)}

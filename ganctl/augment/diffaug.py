"""DiffAugment (Zhao et al. 2020): differentiable augmentations applied to every image D sees,
real and fake, in D's and G's losses alike, so D cannot memorise a small dataset and G still
gets gradients through them. --augment diffaug (all three) or diffaug:translation,color,cutout.

  color        brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5]
  translation  a shift of up to 1/8 of the size, zero-filled
  cutout       a zero square of half the size at a random place
Each image draws its own parameters from the generator given (the run's, so it is resumed).

DiffAugment has no state and no feedback (ada.py's adaptive augmentation has both).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ganctl.augment.base import OFF, Augmentation, Generator
from ganctl.errors import ConfigError, shorten


def _rand(x: torch.Tensor, g: Generator, *shape: int) -> torch.Tensor:
    return torch.rand(x.shape[0], *shape, device=x.device, dtype=x.dtype, generator=g)


def color(x: torch.Tensor, g: Generator) -> torch.Tensor:
    x = x + (_rand(x, g, 1, 1, 1) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(x, g, 1, 1, 1) * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, g, 1, 1, 1) + 0.5) + mean  # contrast


def translation(x: torch.Tensor, g: Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by whole pixels (up to ratio of its size), filling with zeros."""
    b, _, h, w = x.shape
    shift = torch.stack([((_rand(x, g) * 2 - 1) * ratio * s).round() for s in (w, h)], dim=1)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = -2 * shift / torch.tensor([w, h], device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def cutout(x: torch.Tensor, g: Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of ratio x the size, centred anywhere in the image (clipped at its edges)."""
    _, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = (_rand(x, g) * (h + 1 - ch % 2)).floor()[:, None, None]  # (B, 1, 1) centres
    cx = (_rand(x, g) * (w + 1 - cw % 2)).floor()[:, None, None]
    ys = torch.arange(h, device=x.device, dtype=x.dtype)[None, :, None]
    xs = torch.arange(w, device=x.device, dtype=x.dtype)[None, None, :]
    top, left = cy - ch // 2, cx - cw // 2
    inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)  # (B, H, W)
    return x * (~inside)[:, None].to(x.dtype)


POLICIES: dict[str, Callable[[torch.Tensor, Generator], torch.Tensor]] = {
    "color": color, "translation": translation, "cutout": cutout}



def parse(spec: str) -> list[str]:
    """'', 'none', 'off' -> []; 'diffaug' -> every policy; 'diffaug:translation,color' -> those,
    in order. Anything else, an empty or repeated policy included, is refused."""
    if spec.strip().lower() in OFF:
        return []
    name, colon, listed = spec.partition(":")
    if name != "diffaug":
        raise ConfigError(f"augment {shorten(spec)}: the augmentation is diffaug, e.g. diffaug or "
                          "diffaug:translation,color,cutout (none turns it off)")
    if not colon:
        return list(POLICIES)
    policies = [p.strip() for p in listed.split(",")]
    for p in policies:
        if p not in POLICIES:
            raise ConfigError(f"augment {shorten(spec)}: {'an empty' if not p else 'unknown'} policy"
                              f"{'' if not p else ' ' + repr(p)}; list some of "
                              f"{', '.join(POLICIES)}, comma-separated, or write diffaug for all")
    if len(set(policies)) < len(policies):
        raise ConfigError(f"augment {shorten(spec)} names a policy twice; name each once")
    return policies


class DiffAugment(Augmentation):
    """DiffAugment's policies in order; no state, no feedback."""

    def __init__(self, policies: list[str]) -> None:
        super().__init__()
        self.policies = list(policies)

    def forward(self, x: torch.Tensor, generator: Generator) -> torch.Tensor:
        for policy in self.policies:
            x = POLICIES[policy](x, generator)
        return x.contiguous()

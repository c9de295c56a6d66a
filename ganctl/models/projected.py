"""A projected discriminator (Sauer et al., "Projected GANs Converge Faster", 2021): D judges
images through a frozen ImageNet network instead of learning its features from scratch.

The image is resized to the backbone's size (224 below 224 px, as Projected GAN does) and run
through a frozen EfficientNet-Lite0 (models/efficientnet.py, held outside D's module tree:
models/backbone.py). Its four feature levels (strides 4, 8, 16, 32) are mixed by fixed random
projections: a 1x1 convolution per level (cross-channel mixing, CCM) and a top-down path that
adds each level, upsampled, to the one above it (cross-scale mixing, CSM). Those projections are
drawn from the run's seed when D is built and never trained: they are buffers, so the optimizer
never sees them, spectral normalisation never touches them, and a checkpoint restores them
exactly. A small discriminator on each level (strided 4x4 convolutions with BatchNorm, left out
under a gradient penalty as dcgan's D does, then a 4x4 convolution to one logit per patch) is all
that trains; each level's patch logits are averaged and the four levels' logits summed into D's
(B,) output.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ganctl.models.backbone import WithFrozen
from ganctl.models.efficientnet import LEVEL_CHANNELS, STRIDE, EfficientNetLite0

BACKBONE = "efficientnet-lite0"  # its entry in models.backbone.BACKBONES
TRAINED_SIZE = 224  # what EfficientNet-Lite0 saw on ImageNet
FINAL_SIZE = 8  # each level's D halves its features until they are at most this size
CMAP = 64  # a conditional D's class-embedding size (Projected GAN's cmap_dim)


def backbone_size(resolution: int, asked: int = 0) -> int:
    """The size images are resized to for the backbone: `asked`, else 224 below 224 px (as
    Projected GAN does), else the images' own."""
    return asked or (TRAINED_SIZE if resolution < TRAINED_SIZE else resolution)


def _random_conv(cout: int, cin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1x1 convolution's weight and bias as torch's Conv2d draws them: U(-1/sqrt(cin), ..)."""
    bound = 1 / math.sqrt(cin)
    return ((torch.rand(cout, cin, 1, 1) * 2 - 1) * bound, (torch.rand(cout) * 2 - 1) * bound)


class RandomProjection(nn.Module):
    """Fixed random cross-channel (CCM) and cross-scale (CSM) mixing of the backbone's four
    levels, with Projected GAN's widths for width 64: CCM to (w, 2w, 4w, 8w) channels, then from
    the deepest level up, each level plus the one below upsampled 2x, halved in channels by a 1x1
    convolution (the shallowest keeps w): out (w, w, 2w, 4w) channels at twice each level's size."""

    def __init__(self, width: int) -> None:
        super().__init__()
        mixed = [width * 2**i for i in range(4)]
        self.channels = [width, *mixed[:3]]  # what each level's D receives
        for i, (cin, cout) in enumerate(zip(LEVEL_CHANNELS, mixed, strict=True)):
            self._buffers_of(f"ccm{i}", *_random_conv(cout, cin))
            self._buffers_of(f"csm{i}", *_random_conv(self.channels[i], cout))

    def _buffers_of(self, name: str, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.register_buffer(f"{name}_weight", weight)
        self.register_buffer(f"{name}_bias", bias)

    def _conv(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias"))

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        mixed = [self._conv(f"ccm{i}", x) for i, x in enumerate(levels)]
        out: list[torch.Tensor] = []
        below: torch.Tensor | None = None
        for i in reversed(range(4)):  # the deepest level first: top-down
            x = mixed[i] if below is None else mixed[i] + below
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            below = self._conv(f"csm{i}", x)
            out.insert(0, below)
        return out  # (B, channels[i], 2 S / 2^(i+2), ...)


class LevelD(nn.Module):
    """One level's discriminator: 4x4 stride-2 convolutions with BatchNorm and LeakyReLU(0.2)
    until the features are at most 8 px, widening to 8 x width, then a 4x4 convolution to one
    logit per patch (to CMAP channels projected on the class's embedding, when conditional),
    averaged over the patches: (B,)."""

    def __init__(self, cin: int, size: int, width: int, classes: int = 0,
                 batchnorm: bool = True) -> None:
        super().__init__()
        halvings = 0
        while size > FINAL_SIZE:
            size, halvings = size // 2, halvings + 1
        layers: list[nn.Module] = []
        for j in range(halvings):
            cout = width * 2 ** max(3 - (halvings - 1 - j), 0)  # the last 4 widen to 8 x width
            norm = [nn.BatchNorm2d(cout)] if batchnorm else []
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), *norm, nn.LeakyReLU(0.2)]
            cin = cout
        self.main = nn.Sequential(*layers)
        self.out = nn.Conv2d(cin, CMAP if classes else 1, min(4, size), bias=False)
        self.embed = nn.Embedding(classes, CMAP) if classes else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.out(self.main(x))  # (B, 1 or CMAP, h, w)
        if self.embed is not None and c is not None:  # projection conditioning
            h = (h * self.embed(c)[:, :, None, None]).sum(1, keepdim=True) / math.sqrt(CMAP)
        return h.mean(dim=(1, 2, 3))


class ProjectedD(WithFrozen):
    """D(x, c) -> (B,) logits for (B, C, R, R) images in [-1, 1] (grey ones seen as RGB)."""

    def __init__(self, resolution: int, channels: int, width: int, classes: int = 0,
                 size: int = 0, batchnorm: bool = True) -> None:
        super().__init__()
        self.size = backbone_size(resolution, size)
        self.attach(BACKBONE, EfficientNetLite0())
        self.project = RandomProjection(width)
        sizes = [2 * self.size // (4 * 2**i) for i in range(4)]  # CSM doubles each level's size
        self.heads = nn.ModuleList(LevelD(cin, s, width, classes, batchnorm) for cin, s in
                                   zip(self.project.channels, sizes, strict=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey as RGB, as the backbone wants
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        backbone = cast(EfficientNetLite0, self.frozen(BACKBONE))
        features = self.project(backbone.levels(x))
        return torch.stack([d(f, c) for d, f in zip(self.heads, features, strict=True)]).sum(0)


def check_size(size: int) -> str | None:
    """What is wrong with a backbone size (None: nothing)."""
    if size % STRIDE or size < STRIDE:
        return f"a multiple of {STRIDE} (its deepest features are 1/{STRIDE} of it)"
    return None

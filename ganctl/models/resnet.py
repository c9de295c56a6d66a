"""A residual G and D after SNGAN and BigGAN (Miyato et al. 2018; Brock et al. 2019).

G: z -> linear -> 4x4 -> up-blocks (BN, ReLU, 2x nearest upsampling, 3x3 conv, BN, ReLU, 3x3
conv; a 1x1 conv on the upsampled shortcut) -> BN, ReLU, 3x3 conv, tanh. Conditional: the
BatchNorms are class-conditional.
D: an optimised first block, down-blocks (ReLU, conv, ReLU, conv, 2x average pooling; a 1x1
conv on the pooled shortcut), blocks at the last size (8x8 at 32, 4x4 above), ReLU, global sum
pooling, linear (plus the
projection <embed(c), h> when conditional). Spectral norm on every layer by default.
Widths: G's blocks have g_width x (4, 4, 4) channels at 32, x (8, 4, 2, 1) at 64 and
x (8, 8, 4, 2, 1) at 128; D's d_width x (2, 2, 2, 2), (1, 2, 4, 8, 8), (1, 2, 4, 8, 8, 8).
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from ganctl.models.base import Architecture
from ganctl.models.layers import ConditionalBatchNorm2d, Projection, batch_norm

BASE = 4
G_WIDTHS = {32: (4, 4, 4, 4), 64: (8, 8, 4, 2, 1), 128: (8, 8, 8, 4, 2, 1)}  # from 4x4 up
D_WIDTHS = {32: (2, 2, 2, 2), 64: (1, 2, 4, 8, 8), 128: (1, 2, 4, 8, 8, 8)}
D_DOWNS = {32: 2, 64: 4, 128: 5}  # halvings: to 8x8 at 32 (as SNGAN), to 4x4 above


def _norm(layer: nn.Module, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    return layer(x, c) if isinstance(layer, ConditionalBatchNorm2d) else layer(x)


class GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, classes: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = batch_norm(cin, classes), batch_norm(cout, classes)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        h = F.interpolate(F.relu(_norm(self.bn1, x, c)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(_norm(self.bn2, self.conv1(h), c)))
        return h + self.skip(F.interpolate(x, scale_factor=2, mode="nearest"))  # (B, cout, 2H, 2W)


class Generator(nn.Module):
    def __init__(self, z_dim: int, resolution: int, channels: int, width: int,
                 classes: int = 0) -> None:
        super().__init__()
        widths = [width * m for m in G_WIDTHS[resolution]]
        self.base_channels = widths[0]
        self.fc = nn.Linear(z_dim, widths[0] * BASE * BASE)
        self.blocks = nn.ModuleList(GBlock(a, b, classes) for a, b in pairwise(widths))
        self.bn = nn.BatchNorm2d(widths[-1])
        self.out = nn.Conv2d(widths[-1], channels, 3, padding=1)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], self.base_channels, BASE, BASE)  # (B, C, 4, 4)
        for block in self.blocks:
            x = block(x, c)
        return torch.tanh(self.out(F.relu(self.bn(x))))  # (B, channels, R, R)


class DBlock(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool, first: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout or down else None
        self.down, self.first = down, first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)  # the first block sees the image itself
        h = self.conv2(F.relu(self.conv1(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        shortcut = x
        if self.first:  # pool, then project (SNGAN's optimised block)
            shortcut = self.skip(F.avg_pool2d(x, 2)) if self.skip is not None else x
        else:
            if self.skip is not None:
                shortcut = self.skip(shortcut)
            if self.down:
                shortcut = F.avg_pool2d(shortcut, 2)
        return h + shortcut


class Discriminator(nn.Module):
    def __init__(self, resolution: int, channels: int, width: int, classes: int = 0) -> None:
        super().__init__()
        widths = [width * m for m in D_WIDTHS[resolution]]
        downs = D_DOWNS[resolution]
        blocks = [DBlock(channels, widths[0], down=True, first=True)]
        blocks += [DBlock(a, b, down=i < downs - 1) for i, (a, b) in enumerate(pairwise(widths))]
        self.blocks = nn.Sequential(*blocks)
        self.head = Projection(widths[-1], classes)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # (B, C): global sum pooling
        return self.head(h, c)  # (B,)


def init_weights(net: nn.Module) -> None:
    """Xavier-uniform convolutions and linears (as SNGAN), zero biases; BatchNorm as torch's."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight, gain=1.0 if m.weight.shape[-1] == 1 else math.sqrt(2))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ResNet(Architecture):
    name = "resnet"
    generator = Generator
    discriminator = Discriminator
    resolutions = (32, 64, 128)
    spectral_norm_default = True

    def init_weights(self, net: nn.Module) -> None:
        init_weights(net)

"""DCGAN (Radford et al. 2016), as in the article: BatchNorm, ReLU in G, LeakyReLU(0.2)
in D, tanh output, weights drawn from N(0, 0.02). Conditional: class-conditional BatchNorm in G
and a projection head on D. Under wgan-gp, D has no BatchNorm (the penalty is per image).

G's first layer is a Linear from z to a 4x4 feature map rather than a ConvTranspose on a
(N, z_dim, 1, 1) input: the two compute the same function, but the 1x1 input breaks
torch.compile's backward in channels_last.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ganctl.config import Config
from ganctl.models.base import Architecture, penalised, penalty_name
from ganctl.models.layers import ConditionalBatchNorm2d, ConditionalSequential, batch_norm, project

BASE = 4  # spatial size of G's first feature map and D's last one


def _num_up(resolution: int) -> int:
    return int(math.log2(resolution // BASE))  # 2x up/down-sampling layers between 4 and R


class Generator(nn.Module):
    def __init__(self, z_dim: int, resolution: int, channels: int, width: int,
                 classes: int = 0) -> None:
        super().__init__()
        n = _num_up(resolution)
        c = width * 2 ** (n - 1)  # channels at 4x4: ngf*8 for 64x64, ngf*4 for 32x32
        self.base_channels = c
        self.fc = nn.Linear(z_dim, c * BASE * BASE, bias=False)
        self.bn0 = batch_norm(c, classes)
        blocks: list[nn.Module] = []
        for _ in range(n - 1):
            blocks += [
                nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1, bias=False),
                batch_norm(c // 2, classes),
                nn.ReLU(inplace=True),
            ]
            c //= 2
        blocks += [nn.ConvTranspose2d(c, channels, 4, stride=2, padding=1, bias=False), nn.Tanh()]
        self.blocks = ConditionalSequential(*blocks)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], self.base_channels, BASE, BASE)  # (B, C, 4, 4)
        x = torch.relu(self.bn0(x, c) if isinstance(self.bn0, ConditionalBatchNorm2d) else self.bn0(x))
        return self.blocks(x, c)  # (B, channels, R, R) in [-1, 1]


class Discriminator(nn.Module):
    def __init__(self, resolution: int, channels: int, width: int, classes: int = 0,
                 batchnorm: bool = True) -> None:
        super().__init__()
        n = _num_up(resolution)
        layers: list[nn.Module] = [
            nn.Conv2d(channels, width, 4, stride=2, padding=1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        c = width
        for _ in range(n - 1):
            layers += [
                nn.Conv2d(c, c * 2, 4, stride=2, padding=1, bias=False),
                *([nn.BatchNorm2d(c * 2)] if batchnorm else []),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            c *= 2
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c * BASE * BASE, 1, bias=False)  # = DCGAN's final 4x4 valid conv
        # projection (conditional): + <embed(c), h>
        self.embed = nn.Embedding(classes, c * BASE * BASE) if classes else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return project(self.fc, self.embed, self.features(x).flatten(1), c)  # h: (B, C*4*4)


def init_weights(module: nn.Module) -> None:
    """DCGAN init: conv/linear weights ~ N(0, 0.02), BatchNorm gamma ~ N(1, 0.02), beta = 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGAN(Architecture):
    name = "dcgan"
    generator = Generator
    discriminator = Discriminator
    resolutions = (32, 64, 128)
    graphs_faster = True  # 21.5k against 12.1k img/s at batch 128 on an H200 (RESULTS.md)

    def own_notes(self, config: Config) -> list[str]:
        if penalised(config):
            return [f"{penalty_name(config)}: dcgan's D is built without BatchNorm (the gradient "
                    "penalty is per image, and BatchNorm mixes the images of a batch)"]
        return []

    def discriminator_options(self, config: Config) -> dict[str, Any]:
        return {"batchnorm": not penalised(config)}

    def init_weights(self, net: nn.Module) -> None:
        init_weights(net)

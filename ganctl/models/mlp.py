"""The article's fully connected GAN: G maps z through LeakyReLU(0.2) hidden layers (BatchNorm
after the first) to a tanh image; D maps the flattened image through LeakyReLU(0.2) hidden
layers to one logit. For small images such as MNIST at 28 or 32. Hidden sizes: G g_width x
(4, 8, 16) (256, 512, 1024 at the default 64), D d_width x (8, 4) (512, 256). Conditional: a
one-hot class concatenated to z and to D's input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganctl.config import Config
from ganctl.errors import ConfigError
from ganctl.models.base import Architecture

G_HIDDEN = (4, 8, 16)
D_HIDDEN = (8, 4)


def _with_class(x: torch.Tensor, c: torch.Tensor | None, classes: int) -> torch.Tensor:
    if not classes:
        return x
    if c is None:
        raise ValueError("a conditional network needs the class labels")
    return torch.cat([x, F.one_hot(c, classes).to(x.dtype)], dim=1)


class Generator(nn.Module):
    def __init__(self, z_dim: int, resolution: int, channels: int, width: int,
                 classes: int = 0) -> None:
        super().__init__()
        self.shape, self.classes = (channels, resolution, resolution), classes
        layers: list[nn.Module] = []
        size = z_dim + classes
        for i, m in enumerate(G_HIDDEN):
            layers += [nn.Linear(size, width * m), *([nn.BatchNorm1d(width * m)] if i else []),
                       nn.LeakyReLU(0.2, inplace=True)]
            size = width * m
        layers += [nn.Linear(size, channels * resolution * resolution), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(_with_class(z, c, self.classes)).view(z.shape[0], *self.shape)


class Discriminator(nn.Module):
    def __init__(self, resolution: int, channels: int, width: int, classes: int = 0) -> None:
        super().__init__()
        self.classes = classes
        layers: list[nn.Module] = []
        size = channels * resolution * resolution + classes
        for m in D_HIDDEN:
            layers += [nn.Linear(size, width * m), nn.LeakyReLU(0.2, inplace=True)]
            size = width * m
        layers.append(nn.Linear(size, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(_with_class(x.flatten(1), c, self.classes)).squeeze(1)  # (B,)


class MLP(Architecture):
    name = "mlp"
    generator = Generator
    discriminator = Discriminator
    resolutions = (16, 28, 32, 64)

    def check(self, config: Config) -> None:
        super().check(config)
        if config.batch_size == 1:  # BatchNorm1d over one image has nothing to normalise against
            raise ConfigError("mlp's G normalises each layer over the batch (BatchNorm), so it "
                              "needs --batch-size 2 or more")


"""StyleGAN2's discriminator, with NVlabs' parameter and buffer names.

From the image's resolution down to 8x8, blocks of fromRGB (the first block: a 1x1 convolution
of the image), a 3x3 convolution and a 3x3 convolution that downsamples through the [1, 3, 3, 1]
filter, with a residual 1x1 downsampling shortcut (architecture "resnet"; "orig" has none); then
at 4x4 the epilogue: minibatch standard deviation, a 3x3 convolution, a fully connected layer
and the output, projected onto the class's embedding (a mapping network of c) when conditional.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ganctl.models.stylegan2.generator import MappingNetwork, channels, reduced_from
from ganctl.models.stylegan2.ops import (
    Conv2dLayer,
    FullyConnectedLayer,
    MinibatchStdLayer,
    make_filter,
    precision,
)

D_ARCHITECTURES = ("resnet", "orig")
SQRT_HALF = math.sqrt(0.5)


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int,
                 architecture: str, reduced: bool, conv_clamp: float | None) -> None:
        super().__init__()
        self.in_channels, self.architecture, self.reduced = in_channels, architecture, reduced
        self.register_buffer("resample_filter", make_filter())
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu",
                                       conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu",
                                 conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2,
                                 conv_clamp=conv_clamp)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> torch.Tensor:
        with precision(self.reduced, img):
            if self.in_channels == 0:
                x = self.fromrgb(img if self.reduced else img.float())
            assert x is not None
            x = x if self.reduced else x.float()
            if self.architecture == "resnet":
                y = self.skip(x, gain=SQRT_HALF)
                return y + self.conv1(self.conv0(x), gain=SQRT_HALF)
            return self.conv1(self.conv0(x))


class DiscriminatorEpilogue(nn.Module):
    def __init__(self, in_channels: int, cmap_dim: int, mbstd_group_size: int,
                 mbstd_num_channels: int, conv_clamp: float | None) -> None:
        super().__init__()
        self.cmap_dim = cmap_dim
        self.mbstd = (MinibatchStdLayer(mbstd_group_size, mbstd_num_channels)
                      if mbstd_num_channels > 0 else None)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3,
                                activation="lrelu", conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * 16, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, cmap_dim or 1)

    def forward(self, x: torch.Tensor, cmap: torch.Tensor | None) -> torch.Tensor:
        with precision(False, x):  # float32, as NVlabs'
            x = x.float()
            if self.mbstd is not None:
                x = self.mbstd(x)
            x = self.out(self.fc(self.conv(x).flatten(1)))
            if cmap is not None:
                x = (x * cmap.float()).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
            return x  # (B, 1)


class Discriminator(nn.Module):
    """D(img, c) -> (B,) logits. Built from NVlabs' init arguments."""

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int,
                 architecture: str = "resnet", channel_base: int = 32768, channel_max: int = 512,
                 num_fp16_res: int = 0, conv_clamp: float | None = None,
                 cmap_dim: int | None = None, mbstd_group_size: int = 4,
                 mbstd_num_channels: int = 1, mapping_layers: int = 8) -> None:
        super().__init__()
        if architecture not in D_ARCHITECTURES:
            raise ValueError(f"architecture must be one of {D_ARCHITECTURES}, got {architecture!r}")
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(int(math.log2(img_resolution)), 2, -1)]
        lowest = reduced_from(img_resolution, num_fp16_res)
        for res in self.block_resolutions:
            block = DiscriminatorBlock(
                channels(channel_base, channel_max, res) if res < img_resolution else 0,
                channels(channel_base, channel_max, res), channels(channel_base, channel_max, res // 2),
                img_channels, architecture, reduced=res >= lowest and num_fp16_res > 0,
                conv_clamp=conv_clamp)
            setattr(self, f"b{res}", block)
        cmap = channels(channel_base, channel_max, 4) if cmap_dim is None else cmap_dim
        cmap = cmap if c_dim else 0
        if c_dim:
            self.mapping = MappingNetwork(0, c_dim, cmap, None, num_layers=mapping_layers)
        self.b4 = DiscriminatorEpilogue(channels(channel_base, channel_max, 4), cmap,
                                        mbstd_group_size, mbstd_num_channels, conv_clamp)

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
        cmap = self.mapping(None, c) if self.c_dim else None
        assert x is not None
        return self.b4(x, cmap).squeeze(1)  # (B,)

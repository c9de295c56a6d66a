"""EfficientNet-Lite0 (Tan & Le, 2019; the Lite variants: ReLU6, no squeeze-excitation, a fixed
stem and head) as a frozen feature network: its four stage outputs, for a projected D.

The module names are those of the `efficientnet-lite-pytorch` implementation (`_conv_stem`,
`_bn0`, `_blocks.N._expand_conv` ...), so the ImageNet weights load with every key matched.
Convolutions pad as TensorFlow's "same" does (asymmetrically for a stride of 2), computed from
the input's size, so any size a multiple of 32 gives the features the network was trained to.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # TensorFlow's batch_norm_epsilon for EfficientNet
# (repeats, kernel, stride, expansion, in, out) of each stage: efficientnet_lite_builder's
# 'r1_k3_s11_e1_i32_o16', 'r2_k3_s22_e6_i16_o24' ...
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
          (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
          (1, 3, 1, 6, 192, 320))
# Projected GAN's four feature levels (its _make_efficientnet): the blocks that end each one, and
# its channels; strides 4, 8, 16, 32
LEVEL_ENDS = (3, 5, 11, 16)
LEVEL_CHANNELS = (24, 40, 112, 320)
STRIDE = 32  # of the deepest level: input sizes are multiples of it


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded as TensorFlow's padding="SAME": the output is
    ceil(size / stride), the padding's odd pixel on the right and bottom."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size),
                              reversed(self.stride), strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expansion, depthwise k x k, 1x1 projection, the input
    added back where the shape allows."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if hasattr(self, "_expand_conv"):
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """The whole network (the head and classifier too, so the ImageNet file loads strictly);
    levels() is what a projected D uses. Input: RGB in [-1, 1]."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in STAGES:
            blocks += [MBConv(kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout,
                              cout) for i in range(repeats)]
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, classes)

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) -> the four levels' features, (B, LEVEL_CHANNELS[i], S/4 ... S/32)."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        out, start = [], 0
        for end in LEVEL_ENDS:
            for block in self._blocks[start:end]:
                h = block(h)
            out.append(h)
            start = end
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, classes) ImageNet logits."""
        h = self.levels(x)[-1]
        h = F.relu6(self._bn1(self._conv_head(h)))
        return self._fc(h.mean(dim=(2, 3)))

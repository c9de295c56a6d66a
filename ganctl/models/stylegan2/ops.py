"""StyleGAN2's operations in plain PyTorch: no compiled extensions, nothing but torch's own
convolutions, so a machine with torch runs them and torch.compile fuses them.

NVlabs implement bias_act, upfirdn2d and the filtered resampling convolutions as custom CUDA
kernels; here each is a few torch calls that compute the same numbers (their reference
implementations are the definition): a resampling filter is a depthwise convolution with a
normalised [1, 3, 3, 1] kernel after zero-insertion (up) and before subsampling (down), and an
up- or down-sampling 3x3 convolution is a strided (transposed) convolution and that filter, with
NVlabs' padding so that pretrained weights give their images.

Equalised learning rate (Karras et al. 2018): weights are stored unit-normal and scaled by
1/sqrt(fan_in) (times a learning-rate multiplier) in every forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2)  # keeps a unit-normal signal's scale through the leaky ReLU
ACT_GAIN = {"linear": 1.0, "lrelu": LRELU_GAIN}
RESAMPLE = (1, 3, 3, 1)  # the low-pass filter of every up- and downsampling


def make_filter(taps: Sequence[float] = RESAMPLE) -> torch.Tensor:
    """The 2-D resampling filter: the outer product of `taps` with itself, summing to 1."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()  # (K, K)


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad (x0, x1, y0, y1; negative crops), filter with f (a
    depthwise convolution, f scaled by gain), keep every `down`-th pixel. (B, C, H, W) in."""
    # plain ints: a traced export (ONNX) needs the depthwise kernel's shape to be known
    channels, height, width = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
    if up > 1:
        x = x.reshape(-1, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(-1, channels, height * up, width * up)
    x0, x1, y0, y1 = pad
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0):x.shape[2] - max(-y1, 0), max(-x0, 0):x.shape[3] - max(-x1, 0)]
    kernel = (f * gain).to(x.dtype).flip([0, 1])  # a convolution, not a correlation (f symmetric)
    kernel = kernel[None, None].expand(channels, 1, *f.shape)
    x = F.conv2d(x, kernel, groups=channels)
    return x[:, :, ::down, ::down] if down > 1 else x


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x upsampling through the filter: (B, C, H, W) -> (B, C, 2H, 2W)."""
    k = f.shape[-1]
    return upfirdn2d(x, f, up=2, pad=((k + 1) // 2, (k - 2) // 2, (k + 1) // 2, (k - 2) // 2),
                     gain=4.0)


def downsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x downsampling through the filter: (B, C, H, W) -> (B, C, H/2, W/2)."""
    k = f.shape[-1]
    return upfirdn2d(x, f, down=2, pad=((k - 1) // 2, (k - 2) // 2, (k - 1) // 2, (k - 2) // 2))


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None, up: int = 1,
                    down: int = 1, padding: int = 0, groups: int = 1) -> torch.Tensor:
    """A convolution with weight w (O, I/groups, k, k) and 2x up- or downsampling through the
    filter f where asked, as NVlabs' conv2d_resample computes it: a correlation (F.conv2d)
    without upsampling, and with it a transposed convolution with w as it is (their layers
    pass flip_weight=False when up > 1, and pretrained weights expect that)."""
    kernel = w.shape[-1]
    if up == 1 and down == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    assert f is not None
    k = f.shape[-1]
    if down > 1:  # filter, then a strided convolution (a 1x1 one on the subsampled image)
        lo, hi = padding + (k - down + 1) // 2, padding + (k - down) // 2
        if kernel == 1:
            return F.conv2d(upfirdn2d(x, f, down=down, pad=(lo, hi, lo, hi)), w, groups=groups)
        return F.conv2d(upfirdn2d(x, f, pad=(lo, hi, lo, hi)), w, stride=down, groups=groups)
    # up: a strided transposed convolution, then the filter (gain up^2 keeps the mean)
    lo = padding + (k + up - 1) // 2 - (kernel - 1)
    hi = padding + (k - up) // 2 - (kernel - up)
    out, inn = w.shape[0], w.shape[1]
    wt = w.reshape(groups, out // groups, inn, kernel, kernel).transpose(1, 2)
    wt = wt.reshape(groups * inn, out // groups, kernel, kernel)  # unflipped, as NVlabs'
    trim = max(min(-lo, -hi), 0)
    x = F.conv_transpose2d(x, wt, stride=up, padding=trim, groups=groups)
    lo, hi = lo + trim, hi + trim
    return upfirdn2d(x, f, pad=(lo, hi, lo, hi), gain=float(up * up))


def bias_act(x: torch.Tensor, bias: torch.Tensor | None, act: str = "linear", gain: float = 1.0,
             clamp: float | None = None) -> torch.Tensor:
    """x + bias (along dim 1), the activation, times gain, clamped to [-clamp, clamp]."""
    if bias is not None:
        x = x + bias.to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each row scaled to unit mean square."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     noise: torch.Tensor | None = None, up: int = 1, padding: int = 0,
                     f: torch.Tensor | None = None, demodulate: bool = True,
                     fused: bool = True) -> torch.Tensor:
    """StyleGAN2's modulated convolution: weight (O, I, k, k) scaled per sample by styles (B, I)
    on its input channels, then (demodulate) each output channel rescaled to unit norm; plus
    noise. fused: one grouped convolution with per-sample weights; else the activations are
    scaled before and after one shared convolution (the same numbers; faster to train)."""
    batch = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    w = weight[None] * styles.reshape(batch, 1, -1, 1, 1)  # (B, O, I, k, k)
    dcoefs = (w.float().square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demodulate else None  # (B, O)
    if not fused:
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f, up=up, padding=padding)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
        return x if noise is None else x + noise.to(x.dtype)
    if dcoefs is not None:
        w = w * dcoefs.to(w.dtype).reshape(batch, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    x = conv2d_resample(x, w.reshape(-1, in_ch, kh, kw).to(x.dtype), f, up=up, padding=padding,
                        groups=batch)
    x = x.reshape(batch, out_ch, *x.shape[2:])
    return x if noise is None else x + noise.to(x.dtype)


def precision(reduced: bool, like: torch.Tensor) -> nullcontext[None] | torch.autocast:
    """Float32 whatever autocast is on, unless `reduced` (a block at one of the resolutions
    that run in the reduced precision of the run's autocast): `like` gives the device."""
    if reduced or not torch.is_autocast_enabled(like.device.type):
        return nullcontext()
    return torch.autocast(like.device.type, enabled=False)


class FullyConnectedLayer(nn.Module):
    """A linear layer with equalised learning rate: weight (out, in) stored unit-normal over
    lr_multiplier, used times lr_multiplier / sqrt(in); bias times lr_multiplier."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation: str = "linear", lr_multiplier: float = 1.0,
                 bias_init: float = 0.0) -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b: torch.Tensor | None = None
        if self.bias is not None:
            b = self.bias.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, self.activation, ACT_GAIN[self.activation])


class Conv2dLayer(nn.Module):
    """A convolution with equalised learning rate, optional 2x resampling through the filter,
    bias, activation (with its gain) and clamp."""

    resample_filter: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.register_buffer("resample_filter", make_filter())
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = ACT_GAIN[activation]
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        x = conv2d_resample(x, w, self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, self.act_gain * gain, clamp)


def group_size(batch: int, wanted: int) -> int:
    """The minibatch-stddev group: `wanted` images, or the largest divisor of the batch below
    it (NVlabs require the batch to divide; any batch size works here)."""
    size = min(wanted, batch)
    while batch % size:
        size -= 1
    return size


class MinibatchStdLayer(nn.Module):
    """Appends the standard deviation of the features over groups of images (Karras et al.
    2018): D sees how varied a batch is, which discourages G from collapsing."""

    def __init__(self, group_size: int, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = group_size(n, self.group_size)
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)  # (G, n, F, c, H, W)
        y = (y - y.mean(dim=0)).square().mean(dim=0)  # variance over each group
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])  # (n, F): mean stddev over channels and pixels
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # (N, F, H, W)
        return torch.cat([x, y], dim=1)

"""StyleGAN2's generator (Karras et al. 2020), with NVlabs' parameter and buffer names.

mapping: z (normalised; with the class embedding, normalised, for a conditional G) -> N fully
connected layers (lr multiplier 0.01, leaky ReLU) -> w, repeated for each of the num_ws layers
that take a style; w_avg follows the mean w.
synthesis: a learned 4x4 constant, then per resolution a block of two modulated, demodulated 3x3
convolutions (the first upsampling through the [1, 3, 3, 1] filter), each with per-pixel noise
of a learned strength, bias, leaky ReLU (gain sqrt 2, optional clamp), and a toRGB 1x1 modulated
convolution whose image is added to the upsampled image of the block before (skip).

Reduced precision: the blocks at the `num_fp16_res` highest resolutions run in the autocast
that the run's precision sets up (bf16 on CUDA); the others turn it off and run in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ganctl.models.generator import forward_mapped
from ganctl.models.stylegan2.ops import (
    ACT_GAIN,
    FullyConnectedLayer,
    bias_act,
    make_filter,
    modulated_conv2d,
    normalize_2nd_moment,
    precision,
    upsample2d,
)

NOISE_MODES = ("random", "const", "none")


def one_hot(c: torch.Tensor | None, c_dim: int, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Class labels as NVlabs' networks take them: (B,) indices become (B, c_dim) one-hot rows;
    (B, c_dim) rows pass as they are."""
    if c is None:
        raise ValueError("a conditional network needs the class labels")
    if c.ndim == 1:
        return F.one_hot(c.long(), c_dim).to(like.device, torch.float32)
    return c.to(like.device, torch.float32).reshape(batch, c_dim)


class MappingNetwork(nn.Module):
    """z (and c) -> w (B, num_ws, w_dim), or (B, w_dim) when num_ws is None (D's class map)."""

    w_avg: torch.Tensor

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None,
                 num_layers: int = 8, lr_multiplier: float = 0.01) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers = num_layers
        embed = w_dim if c_dim else 0
        features = [z_dim + embed] + [w_dim] * num_layers
        if c_dim:
            self.embed = FullyConnectedLayer(c_dim, embed)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1],
                                                        activation="lrelu",
                                                        lr_multiplier=lr_multiplier))
        if num_ws is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None = None) -> torch.Tensor:
        with precision(False, next(self.parameters())):  # float32 under any autocast, as NVlabs'
            return self._forward(z, c)

    def _forward(self, z: torch.Tensor | None, c: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if self.z_dim:
            assert z is not None
            parts.append(normalize_2nd_moment(z.float()))
        if self.c_dim:
            like = parts[0] if parts else self.embed.weight
            batch = z.shape[0] if z is not None else c.shape[0]  # type: ignore[union-attr]
            parts.append(normalize_2nd_moment(self.embed(one_hot(c, self.c_dim, batch, like))))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if self.num_ws is None:
            return x  # (B, w_dim)
        return x.unsqueeze(1).repeat(1, self.num_ws, 1)  # (B, num_ws, w_dim)


class SynthesisLayer(nn.Module):
    """A modulated 3x3 convolution (upsampling 2x where up=2), noise, bias, leaky ReLU."""

    resample_filter: torch.Tensor
    noise_const: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 up: int = 1, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.resolution, self.up, self.conv_clamp = resolution, up, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.register_buffer("resample_filter", make_filter())
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None,
                fused: bool) -> torch.Tensor:
        styles = self.affine(w)  # (B, in_channels)
        if noise is not None:
            noise = noise * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise, up=self.up, padding=1,
                             f=self.resample_filter, fused=fused)
        return bias_act(x, self.bias, "lrelu", ACT_GAIN["lrelu"], self.conv_clamp)


class ToRGBLayer(nn.Module):
    """A modulated (not demodulated) 1x1 convolution to the image's channels, plus bias."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: (const or conv0 with upsampling), conv1, toRGB
    added to the upsampled image so far."""

    resample_filter: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 img_channels: int, reduced: bool, conv_clamp: float | None) -> None:
        super().__init__()
        self.in_channels, self.resolution, self.reduced = in_channels, resolution, reduced
        self.register_buffer("resample_filter", make_filter())
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution,
                                    conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        fused = False  # a shared convolution over the batch (NVlabs' grouped one is ops' fused)
        with precision(self.reduced, ws):
            if self.in_channels == 0:
                x = self.const[None].repeat(ws.shape[0], 1, 1, 1)
                x = self.conv1(x, ws[:, 0], noise[0], fused)
            else:
                assert x is not None
                x = x if self.reduced else x.float()
                x = self.conv0(x, ws[:, 0], noise[0], fused)
                x = self.conv1(x, ws[:, 1], noise[1], fused)
            y = self.torgb(x, ws[:, self.num_conv], fused).float()
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img


def channels(channel_base: int, channel_max: int, resolution: int) -> int:
    """NVlabs' feature maps of a block at `resolution`."""
    return min(channel_base // resolution, channel_max)


def reduced_from(resolution: int, num_fp16_res: int) -> int:
    """The lowest resolution whose blocks run in reduced precision (NVlabs' fp16_resolution)."""
    return max(2 ** (int(math.log2(resolution)) + 1 - num_fp16_res), 8)


class SynthesisNetwork(nn.Module):
    """ws (B, num_ws, w_dim) -> images (B, img_channels, R, R)."""

    NOISE_MODES = NOISE_MODES

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int,
                 channel_base: int = 32768, channel_max: int = 512, num_fp16_res: int = 0,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(2, int(math.log2(img_resolution)) + 1)]
        lowest = reduced_from(img_resolution, num_fp16_res)
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(channels(channel_base, channel_max, res // 2) if res > 4 else 0,
                                   channels(channel_base, channel_max, res), w_dim, res,
                                   img_channels, reduced=res >= lowest and num_fp16_res > 0,
                                   conv_clamp=conv_clamp)
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1  # the last toRGB's
        # noise per image: one plane per convolution, at its block's resolution
        self.noise_sizes = [r * r for r in self.block_resolutions
                            for _ in range(getattr(self, f"b{r}").num_conv)]
        self.noise_size = sum(self.noise_sizes)
        self.noise_mode = "random"  # without explicit noise (models.generator.set_noise_mode)

    def forward(self, ws: torch.Tensor, noise: torch.Tensor | None = None,
                noise_mode: str | None = None) -> torch.Tensor:
        """noise: (B, noise_size) unit-normal values for every layer (training draws them from
        the run's generator); without it, noise_mode (default self.noise_mode): random (drawn
        here), const (the fixed noise_const buffers: the same image for the same w) or none."""
        ws = ws.float()
        planes = self._noise(ws.shape[0], ws.device, noise, noise_mode or self.noise_mode)
        x = img = None
        w_index = layer = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            cur = ws[:, w_index:w_index + block.num_conv + block.num_torgb]
            x, img = block(x, img, cur, planes[layer:layer + block.num_conv])
            w_index += block.num_conv
            layer += block.num_conv
        assert img is not None
        return img

    def _noise(self, batch: int, device: torch.device, noise: torch.Tensor | None,
               mode: str) -> list[torch.Tensor | None]:
        layers = [(getattr(self, f"b{r}"), r) for r in self.block_resolutions]
        convs = [(conv, r) for block, r in layers
                 for conv in ([block.conv1] if block.in_channels == 0 else [block.conv0, block.conv1])]
        if noise is not None:
            parts = torch.split(noise, self.noise_sizes, dim=1)
            return [p.reshape(batch, 1, r, r) for p, (_, r) in zip(parts, convs, strict=True)]
        if mode == "random":
            return [torch.randn(batch, 1, r, r, device=device) for _, r in convs]
        if mode == "const":
            return [conv.noise_const for conv, _ in convs]
        if mode == "none":
            return [None] * len(convs)
        raise ValueError(f"noise_mode must be one of {', '.join(NOISE_MODES)}, got {mode!r}")


class Generator(nn.Module):
    """StyleGAN2's G: G(z, c) = synthesis(mapping(z, c)). Built from NVlabs' init arguments."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int,
                 img_channels: int, mapping_layers: int = 8, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 0,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base,
                                          channel_max, num_fp16_res, conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.noise_size = self.synthesis.noise_size
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, mapping_layers)

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping.w_avg

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None,
                mix_z: torch.Tensor | None = None, cut: torch.Tensor | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        return forward_mapped(self, z, c, mix_z, cut, noise)

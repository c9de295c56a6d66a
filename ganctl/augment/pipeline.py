"""The augmentation pipeline of StyleGAN2-ADA (Karras et al. 2020, "Training Generative
Adversarial Networks with Limited Data"), in plain PyTorch: differentiable (twice, for R1 through
it), with no custom op and no value read back to the host.

Each transform is applied to each image with probability p times its multiplier (1 for every
transform a pipe names). The geometric ones compose into one inverse affine map per image, which
is executed once: the image is reflect-padded, upsampled 2x through a symlet-6 low-pass filter,
resampled bilinearly and downsampled through the same filter (the paper's non-leaking padding and
filtering). The colour ones compose into one 4x4 matrix per image on (R, G, B, 1). Then
image-space filtering (4 frequency bands amplified by random gains), additive noise and cutout.
An image no transform of a stage was drawn for leaves that stage exactly as it came, so at p = 0
the pipeline is the identity, bit for bit.

Parameters and the transforms' order are NVlabs' (their training/augment.py); so are the pipes
(their train.py's --augpipe). Random numbers come from Draws: the whole global batch's, of which
a process keeps its own rows, so several processes augment as one process does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ganctl.augment.ops import (
    band_filter,
    blit,
    cutout,
    matrix,
    recolour,
    rotate2d,
    scale2d,
    translate2d,
    warp,
)

# each transform's strength (NVlabs' defaults)
XINT_MAX = 0.125  # integer translation, of the size
SCALE_STD = 0.2  # log2 std of isotropic scaling
ROTATE_MAX = 1.0  # arbitrary rotation, 1 = a full turn
ANISO_STD = 0.2  # log2 std of anisotropic scaling
XFRAC_STD = 0.125  # fractional translation's std, of the size
BRIGHTNESS_STD = 0.2
CONTRAST_STD = 0.5  # log2
HUE_MAX = 1.0  # a full turn about the luma axis
SATURATION_STD = 1.0  # log2
IMGFILTER_STD = 1.0  # log2 std of a band's gain
BAND_POWER = (10 / 13, 1 / 13, 1 / 13, 1 / 13)  # expected power of the 4 bands (1/f)
NOISE_STD = 0.1

BLIT = ("xflip", "rotate90", "xint")
GEOM = ("scale", "rotate", "aniso", "xfrac")
COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
TRANSFORMS = (*BLIT, *GEOM, *COLOR, "imgfilter", "noise", "cutout")
PIPES = {"blit": BLIT, "geom": GEOM, "color": COLOR, "filter": ("imgfilter",),
         "noise": ("noise",), "cutout": ("cutout",), "bg": BLIT + GEOM,
         "bgc": BLIT + GEOM + COLOR, "bgcf": (*BLIT, *GEOM, *COLOR, "imgfilter"),
         "bgcfn": (*BLIT, *GEOM, *COLOR, "imgfilter", "noise"),
         "bgcfnc": (*BLIT, *GEOM, *COLOR, "imgfilter", "noise", "cutout")}


@dataclass
class Draws:
    """Random numbers for a batch from `generator`: the global batch's (`batch` rows), of which
    this process keeps rows offset ... offset + n."""

    generator: torch.Generator | None
    device: torch.device
    n: int
    batch: int
    offset: int

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.offset:self.offset + self.n]

    def rand(self, *shape: int) -> torch.Tensor:
        return self._rows(torch.rand(self.batch, *shape, generator=self.generator,
                                     device=self.device))

    def randn(self, *shape: int) -> torch.Tensor:
        return self._rows(torch.randn(self.batch, *shape, generator=self.generator,
                                      device=self.device))

    def gate(self, probability: torch.Tensor, *shape: int) -> torch.Tensor:
        """True where a transform is applied: with `probability` (a tensor: p times a multiplier)."""
        return self.rand(*shape) < probability


class Pipeline:
    """The transforms `on` (name -> probability multiplier, TRANSFORMS' names) at strength p."""

    def __init__(self, on: dict[str, float]) -> None:
        unknown = set(on) - set(TRANSFORMS)
        if unknown:
            raise ValueError(f"unknown transforms {sorted(unknown)}; known: {TRANSFORMS}")
        self.on = {name: float(m) for name, m in on.items() if m > 0}
        self.blit = any(name in self.on for name in BLIT)
        self.geometric = any(name in self.on for name in GEOM)
        self.colour = any(name in self.on for name in COLOR)

    def __call__(self, x: torch.Tensor, p: torch.Tensor, draws: Draws) -> torch.Tensor:
        """x (B, C, H, W) float32, augmented at strength p (a 0-d tensor)."""
        if self.blit:
            x = self.blits(x, p, draws)
        if self.geometric:
            G_inv, applied = self.geometry(x, p, draws)
            x = _where(applied, warp(x, G_inv), x)
        if self.colour:
            matrix, applied = self.colour_matrix(x, p, draws)
            x = _where(applied, recolour(x, matrix), x)
        if "imgfilter" in self.on:
            gains, applied = self.band_gains(p, draws)
            x = _where(applied, band_filter(x, gains), x)
        if "noise" in self.on:
            sigma = draws.randn(1, 1, 1).abs() * NOISE_STD
            sigma = torch.where(draws.gate(self.on["noise"] * p, 1, 1, 1), sigma, 0.0)
            x = x + draws.randn(*x.shape[1:]) * sigma
        if "cutout" in self.on:
            x = cutout(x, draws.gate(self.on["cutout"] * p, 1, 1, 1), draws.rand(2, 1, 1))
        return x

    def _gate(self, name: str, p: torch.Tensor, draws: Draws) -> torch.Tensor:
        return draws.gate(self.on[name] * p)

    def blits(self, x: torch.Tensor, p: torch.Tensor, draws: Draws) -> torch.Tensor:
        """x with each image's x-flip, quarter turns and whole-pixel shift (drawn as NVlabs draw
        them), moved pixel for pixel: a flip is the mirror image, a turn rot90's, a shift takes
        its new pixels from the mirror image past the border."""
        n, width = x.shape[0], x.shape[3]
        zero = torch.zeros(n, device=x.device)
        flip, quarter, shift = zero, zero, torch.zeros(n, 2, device=x.device)
        if "xflip" in self.on:
            flip = torch.floor(draws.rand() * 2)
            flip = torch.where(self._gate("xflip", p, draws), flip, 0.0)
        if "rotate90" in self.on:
            quarter = torch.floor(draws.rand() * 4)
            quarter = torch.where(self._gate("rotate90", p, draws), quarter, 0.0)
        if "xint" in self.on:
            shift = torch.round((draws.rand(2) * 2 - 1) * XINT_MAX * width)
            shift = torch.where(self._gate("xint", p, draws)[:, None], shift, 0.0)
        return blit(x, flip > 0, quarter.long(), shift.long())

    def geometry(self, x: torch.Tensor, p: torch.Tensor, draws: Draws
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse map of each image's general geometric transforms (output pixel -> input
        pixel, in pixels from the centre; (B, 3, 3)) and whether any was drawn for it (B,)."""
        n, height, width = x.shape[0], x.shape[2], x.shape[3]
        G_inv = torch.eye(3, device=x.device).expand(n, 3, 3)
        applied = torch.zeros(n, dtype=torch.bool, device=x.device)

        def gated(name: str, value: torch.Tensor, identity: torch.Tensor | float,
                  gate: torch.Tensor | None = None) -> torch.Tensor:
            nonlocal applied
            gate = self._gate(name, p, draws) if gate is None else gate
            applied = applied | gate
            return torch.where(gate.reshape(gate.shape + (1,) * (value.ndim - 1)), value, identity)

        def anisotropic() -> torch.Tensor:
            s = gated("aniso", torch.exp2(draws.randn() * ANISO_STD), 1.0)
            return scale2d(1 / s, s)

        if "scale" in self.on:
            s = gated("scale", torch.exp2(draws.randn() * SCALE_STD), 1.0)
            G_inv = G_inv @ scale2d(1 / s, 1 / s)
        # rotation before and after the anisotropic scaling, so that P(either) = p * multiplier
        p_rot = 1 - torch.sqrt((1 - self.on.get("rotate", 0.0) * p).clamp(0, 1))
        for part in ("before", "after") if "rotate" in self.on else ():
            theta = (draws.rand() * 2 - 1) * math.pi * ROTATE_MAX
            G_inv = G_inv @ rotate2d(gated("rotate", theta, 0.0, gate=draws.rand() < p_rot))
            if part == "before" and "aniso" in self.on:
                G_inv = G_inv @ anisotropic()
        if "aniso" in self.on and "rotate" not in self.on:
            G_inv = G_inv @ anisotropic()
        if "xfrac" in self.on:
            t = gated("xfrac", draws.randn(2) * XFRAC_STD, 0.0)
            G_inv = G_inv @ translate2d(-t[:, 0] * width, -t[:, 1] * height)
        return G_inv, applied

    def colour_matrix(self, x: torch.Tensor, p: torch.Tensor, draws: Draws
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's colour transform, a (B, 4, 4) matrix on (R, G, B, 1), and whether any
        was drawn for it (B,). Hue and saturation need colour: grayscale images skip them."""
        n, device = x.shape[0], x.device
        C = torch.eye(4, device=device).expand(n, 4, 4)
        applied = torch.zeros(n, dtype=torch.bool, device=device)
        one, zero = torch.ones(n, device=device), torch.zeros(n, device=device)
        v = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device) / math.sqrt(3)  # the luma axis
        vv = torch.outer(v, v)
        eye = torch.eye(4, device=device)

        def gated(name: str, value: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
            nonlocal applied
            gate = self._gate(name, p, draws)
            applied = applied | gate
            return torch.where(gate, value, identity)

        if "brightness" in self.on:
            b = gated("brightness", draws.randn() * BRIGHTNESS_STD, zero)
            C = matrix([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]], b) @ C
        if "contrast" in self.on:
            c = gated("contrast", torch.exp2(draws.randn() * CONTRAST_STD), one)
            C = matrix([[c, 0, 0, 0], [0, c, 0, 0], [0, 0, c, 0], [0, 0, 0, 1]], c) @ C
        if "lumaflip" in self.on:
            i = gated("lumaflip", torch.floor(draws.rand() * 2), zero)
            C = (eye - 2 * vv * i[:, None, None]) @ C  # a Householder reflection of luma
        if "hue" in self.on and x.shape[1] >= 3:
            theta = gated("hue", (draws.rand() * 2 - 1) * math.pi * HUE_MAX, zero)
            C = _rotate_about(v, theta) @ C
        if "saturation" in self.on and x.shape[1] >= 3:
            s = gated("saturation", torch.exp2(draws.randn() * SATURATION_STD), one)
            C = (vv + (eye - vv) * s[:, None, None]) @ C
        return C, applied

    def band_gains(self, p: torch.Tensor, draws: Draws) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's gain of the 4 frequency bands (B, 4), each band amplified with its own
        draw and the whole normalised to the expected power, and whether any was drawn (B,)."""
        power = torch.tensor(BAND_POWER, device=draws.device)
        gains = torch.ones(draws.n, len(BAND_POWER), device=draws.device)
        applied = torch.zeros(draws.n, dtype=torch.bool, device=draws.device)
        for band in range(len(BAND_POWER)):
            t_band = torch.exp2(draws.randn() * IMGFILTER_STD)
            gate = self._gate("imgfilter", p, draws)
            applied = applied | gate
            t = torch.ones_like(gains)
            t[:, band] = torch.where(gate, t_band, 1.0)
            gains = gains * (t / (power * t.square()).sum(dim=-1, keepdim=True).sqrt())
        return gains, applied


def _where(applied: torch.Tensor, changed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.where(applied[:, None, None, None], changed, x)


def _rotate_about(v: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(B, 4, 4): a rotation by theta about the unit axis v (x, y, z, 0) (Rodrigues' formula)."""
    x, y, z = v[0], v[1], v[2]
    s, c = torch.sin(theta), torch.cos(theta)
    cc = 1 - c
    return matrix([[x * x * cc + c, x * y * cc - z * s, x * z * cc + y * s, 0],
                    [y * x * cc + z * s, y * y * cc + c, y * z * cc - x * s, 0],
                    [z * x * cc - y * s, z * y * cc + x * s, z * z * cc + c, 0],
                    [0, 0, 0, 1]], theta)

"""The image operations of the augmentation pipeline (pipeline.py draws their parameters):
whole-pixel moves with mirrored borders, the anti-aliased affine warp through a symlet-6
low-pass filter, the colour matrix, the 4-band filter bank and cutout. Plain torch calls,
differentiable twice."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# low-pass filters of orthogonal wavelets (their decomposition taps)
SYM2 = (-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025)
SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148)
MARGIN = len(SYM6) // 4  # pixels of the image the upsampling filter reaches past each side
CUTOUT_SIZE = 0.5  # of the size


def matrix(rows: list[list[torch.Tensor | float]], like: torch.Tensor) -> torch.Tensor:
    """(B, n, n) from n rows of per-image values (B,) or constants."""
    cells = [v if isinstance(v, torch.Tensor) else torch.full_like(like, v) for r in rows for v in r]
    return torch.stack(cells, dim=-1).reshape(like.shape[0], len(rows), len(rows))


def translate2d(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    return matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], tx)


def scale2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    return matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], sx)


def rotate2d(theta: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], theta)


def mirrored(i: torch.Tensor, n: int) -> torch.Tensor:
    """Pixel indices i (any integers) of a row of n pixels mirrored into it: -1 is 1, n is
    n - 2 (the edge pixel not repeated, as F.pad's reflect), and again past the mirror."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = i % period
    return torch.where(i >= n, period - i, i)


def reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """x (B, C, H, W) mirrored `pad` pixels past each side, for any pad (mirrored())."""
    for dim in (2, 3):
        n = x.shape[dim]
        x = x.index_select(dim, mirrored(torch.arange(-pad, n + pad, device=x.device), n))
    return x


def blit(x: torch.Tensor, flip: torch.Tensor, quarter: torch.Tensor, shift: torch.Tensor
         ) -> torch.Tensor:
    """Square images x (B, C, N, N) mirrored left-right where flip (B,), turned by quarter (B,)
    quarter turns, and moved by shift (B, 2) whole pixels (x, y), mirrored past the borders."""
    n, c, height, width = x.shape
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    turned = x
    for k in (1, 2, 3):
        turned = torch.where((quarter == k)[:, None, None, None], torch.rot90(x, k, (2, 3)), turned)
    cols = mirrored(torch.arange(width, device=x.device) - shift[:, :1], width)  # (B, W)
    rows = mirrored(torch.arange(height, device=x.device) - shift[:, 1:], height)  # (B, H)
    turned = turned.gather(3, cols[:, None, None, :].expand(n, c, height, width))
    return turned.gather(2, rows[:, None, :, None].expand(n, c, height, width))


def _fir(x: torch.Tensor, taps: torch.Tensor, dim: int, stride: int = 1) -> torch.Tensor:
    """Each channel correlated with the 1-D `taps` along dim 2 (height) or 3 (width)."""
    shape = (-1, 1) if dim == 2 else (1, -1)
    kernel = taps.reshape(1, 1, *shape).expand(x.shape[1], 1, *taps.reshape(*shape).shape)
    return F.conv2d(x, kernel, stride=(stride, 1) if dim == 2 else (1, stride), groups=x.shape[1])


def _lowpass(device: torch.device) -> torch.Tensor:
    taps = torch.tensor(SYM6, device=device)
    return taps / taps.sum()


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W): zeros inserted after each pixel, then the low-pass filter
    (gain 2 per axis); with downsample2x it gives the image back (an orthogonal wavelet's)."""
    n, c, height, width = x.shape
    x = F.pad(x.reshape(n, c, height, 1, width, 1), [0, 1, 0, 0, 0, 1])
    k = len(SYM6)
    x = F.pad(x.reshape(n, c, height * 2, width * 2), [k // 2, k // 2 - 1] * 2)
    taps = _lowpass(x.device).flip(0) * 2
    return _fir(_fir(x, taps, 3), taps, 2)


def downsample2x(x: torch.Tensor, crop: int = 0) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, (H - 2 crop) / 2, ...): `crop` pixels off each side, the low-pass
    filter and every other pixel (H and W even)."""
    k = len(SYM6)
    trim = crop - (k // 2 - 1)  # the filter reaches k/2 - 1 pixels each side
    if trim > 0:
        x = x[:, :, trim:x.shape[2] - trim, trim:x.shape[3] - trim]
    elif trim < 0:
        x = F.pad(x, [-trim] * 4)
    taps = _lowpass(x.device)
    return _fir(_fir(x, taps, 3, stride=2), taps, 2, stride=2)


def warp(x: torch.Tensor, G_inv: torch.Tensor) -> torch.Tensor:
    """Each image of x (B, C, H, W) resampled through its inverse map G_inv (B, 3, 3: output
    pixel -> input pixel, in pixels from the image's centre), without aliasing and without
    leaking a border: reflect-padded by a quarter of the size (and the filter's reach) and
    upsampled 2x, sampled bilinearly (mirrored again where a sample falls past the padding), and
    downsampled 2x. Flips, quarter turns and whole-pixel shifts move pixels exactly."""
    n, c, height, width = x.shape
    pad = 2 * MARGIN + max(height, width) // 4
    up = upsample2x(reflect_pad(x, pad))
    edge = 2 * MARGIN  # upsampled pixels the zero padding of the filter reached: cut off
    up = up[:, :, edge:up.shape[2] - edge, edge:up.shape[3] - edge]
    canvas_h, canvas_w = 2 * (height + 2 * MARGIN), 2 * (width + 2 * MARGIN)
    ones = torch.ones(n, device=x.device)

    def scale(sx: float, sy: float) -> torch.Tensor:
        return scale2d(ones * sx, ones * sy)

    def shift(t: float) -> torch.Tensor:
        return translate2d(ones * t, ones * t)

    # in the upsampled image's pixels (a pixel's centre moves by half a pixel), then from the
    # canvas' normalised coordinates to the upsampled image's, as affine_grid takes them
    G = scale(2, 2) @ G_inv @ scale(0.5, 0.5)
    G = shift(-0.5) @ G @ shift(0.5)
    G = scale(2 / up.shape[3], 2 / up.shape[2]) @ G @ scale(canvas_w / 2, canvas_h / 2)
    grid = F.affine_grid(G[:, :2, :], [n, c, canvas_h, canvas_w], align_corners=False)
    y = F.grid_sample(up, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return downsample2x(y, crop=2 * MARGIN)


def recolour(x: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """x through each image's colour matrix C (B, 4, 4) on (R, G, B, 1): the first three
    channels of a colour image (a fourth, alpha, is left as it is); a grayscale channel through
    the mean of the matrix's colour rows."""
    n, c, height, width = x.shape
    if c < 3:
        m = C[:, :3, :].mean(dim=1)  # (B, 4)
        return x * m[:, :3].sum(dim=1)[:, None, None, None] + m[:, 3][:, None, None, None]
    rgb = x[:, :3].reshape(n, 3, height * width)
    rgb = (C[:, :3, :3] @ rgb + C[:, :3, 3:]).reshape(n, 3, height, width)
    return rgb if c == 3 else torch.cat([rgb, x[:, 3:]], dim=1)


def _full_convolution(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The full linear convolution of two 1-D sequences (numpy's convolve)."""
    padded = F.pad(a[None, None], [len(b) - 1, len(b) - 1])
    return F.conv1d(padded, b.flip(0)[None, None])[0, 0]


def filter_bank(device: torch.device) -> torch.Tensor:
    """(4, 43) zero-phase filters splitting an image's spectrum into 4 octave bands (lowest
    first) from the symlet-2 wavelet; they sum to a unit impulse."""
    lo = torch.tensor(SYM2, dtype=torch.float64)
    hi = lo * (-1.0) ** torch.arange(len(lo))
    lo2, hi2 = (_full_convolution(f, f.flip(0)) / 2 for f in (lo, hi))
    bank = torch.zeros(4, 1, dtype=torch.float64)
    bank[0, 0] = 1
    for band in range(1, 4):
        spread = torch.zeros(4, 2 * bank.shape[1] - 1, dtype=torch.float64)
        spread[:, ::2] = bank  # each band an octave lower
        bank = torch.stack([_full_convolution(row, lo2) for row in spread])
        start = (bank.shape[1] - len(hi2)) // 2
        bank[band, start:start + len(hi2)] += hi2
    return bank.to(device, torch.float32)


def band_filter(x: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """Each image's 4 frequency bands scaled by its gains (B, 4): one separable filter per
    image, reflect-padded."""
    n, c, height, width = x.shape
    taps = (gains @ filter_bank(x.device)).repeat_interleave(c, dim=0)  # (B * C, K)
    pad = taps.shape[1] // 2
    y = reflect_pad(x, pad).reshape(1, n * c, height + 2 * pad, width + 2 * pad)
    y = F.conv2d(y, taps[:, None, None, :], groups=n * c)
    y = F.conv2d(y, taps[:, None, :, None], groups=n * c)
    return y.reshape(n, c, height, width)


def cutout(x: torch.Tensor, gate: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """A zero square of CUTOUT_SIZE of the size centred at centre (B, 2, 1, 1; x then y, of the
    size) where gate (B, 1, 1, 1)."""
    _, _, height, width = x.shape
    half = torch.where(gate, CUTOUT_SIZE / 2, 0.0)
    xs = (torch.arange(width, device=x.device) + 0.5) / width
    ys = (torch.arange(height, device=x.device)[:, None] + 0.5) / height
    keep = ((xs - centre[:, :1]).abs() >= half) | ((ys - centre[:, 1:]).abs() >= half)
    return x * keep.to(x.dtype)

"""One image in, one (C, R, R) uint8 array out: mode conversion, square crop or pad, resize.

Every input PIL can open is handled: grayscale, RGB, RGBA/LA/palette with transparency
(composited on white), 16-bit, 32-bit and float grayscale (scaled to 8 bits; an image with NaN
or infinite pixels is skipped), CMYK, YCbCr, 1-bit, first frame of an animated GIF. A file
that cannot be used raises Skip with a short reason; the caller counts it and goes on.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
CROPS = ("center", "none")
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
Image.MAX_IMAGE_PIXELS = 16384 * 16384  # larger is a decompression bomb, not a photo


# What PIL's format plugins raise on a header that is garbage or cut short: their own errors
# (OSError, SyntaxError), and the unpacking, indexing and table lookups they do on its bytes.
HEADER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError,
                 TypeError)


class Skip(Exception):
    """A file that is not a usable image; args[0] is the reason."""

    @property
    def reason(self) -> str:
        return self.args[0]


def open_image(data: bytes) -> Image.Image:
    """Open encoded bytes lazily (header only); Skip if they are not an image."""
    if not data:
        raise Skip("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as e:
        raise Skip("too large" if "decompression bomb" in str(e).lower() else "not an image") from None
    except HEADER_ERRORS:
        raise Skip("not an image") from None


def is_gray(image: Image.Image) -> bool:
    return image.mode in GRAY_MODES


# The full scale a grayscale image's values are read against, the smallest that holds its
# brightest pixel: floats in [0, 1] or of 8-bit values, integers of 8 or 16 bits. Beyond those
# (a float image of another range, a 32-bit integer one) no convention says where white is:
# its own brightest pixel is.
FLOAT_SCALES = (1.0, 255.0)
INT_SCALES = (255.0, 65535.0)


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float grayscale -> 8-bit L, its full scale (above) made 255; values
    below 0 are black. Skip for NaN or infinite pixels: no brightness stands for them. Computed
    in float64 with every value finite, so no numpy warning can arise (a float32 image near its
    largest value would overflow float32)."""
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return Image.fromarray(array)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise Skip("non-finite pixels")
    values = array.astype(np.float64)
    peak = float(values.max(initial=0.0))
    scales = FLOAT_SCALES if array.dtype.kind == "f" else INT_SCALES
    top = next((scale for scale in scales if peak <= scale), peak)
    return Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8))


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode -> 'L' (channels=1) or 'RGB' (channels=3)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _to_8bit_gray(image)
    elif image.mode == "P" or image.mode in ("RGBA", "LA", "PA", "RGBa", "La") \
            or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return image if image.mode == target else image.convert(target)


def square(image: Image.Image, crop: str, resolution: int) -> Image.Image:
    """Center-crop (crop='center') or pad with black (crop='none') to a square, then resize."""
    w, h = image.size
    if w != h:
        if crop == "center":
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            image = image.crop((left, top, left + side, top + side))
        else:
            side = max(w, h)
            image = ImageOps.pad(image, (side, side), color=0, centering=(0.5, 0.5))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return image


def convert(image: Image.Image, resolution: int, channels: int, crop: str) -> np.ndarray:
    """An opened image -> (channels, R, R) uint8. Skip if its data turns out unreadable."""
    try:
        if image.format == "JPEG":  # decode at a reduced scale when that still covers R
            image.draft(None, (resolution, resolution))
        image.seek(0)  # first frame of an animation
        image.load()
        image = square(to_mode(image, channels), crop, resolution)
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise Skip("truncated" if "truncat" in str(e).lower() else "unreadable") from None
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)  # (C, R, R)


def decode(data: bytes, resolution: int, channels: int, crop: str) -> np.ndarray:
    return convert(open_image(data), resolution, channels, crop)


def from_array(pixels: np.ndarray, resolution: int, channels: int, crop: str) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 -> (channels, R, R) uint8, skipping PIL when nothing changes."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    h, w, c = pixels.shape
    if (h, w) == (resolution, resolution) and c == channels:
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))
    image = Image.fromarray(pixels[:, :, 0] if c == 1 else pixels)
    return convert(image, resolution, channels, crop)

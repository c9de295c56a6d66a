"""Images as files: grids of them, their encodings (PNG, JPEG, WebP), and writing them.

Images here are uint8: (n, C, H, W) batches in, (H, W, C) pictures out. A grid's size is
checked before any pixel is drawn, so a request too big for one file is an error, not an
allocation that fails.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ganctl.errors import ConfigError
from ganctl.fsutil import atomic_write

GRID_PADDING = 2  # pixels between and around the images of a grid
# what `ganctl sample OUT` writes, by OUT's suffix
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
QUALITY = 95  # JPEG and WebP (lossy): near enough to the pixels to judge samples by
MAX_FILE_PIXELS = 1 << 30  # bytes of pixels in one grid file (a 16k x 16k RGB image is 0.8 GB)
# the longest side each format's encoder takes (libjpeg: 65500; WebP: 16383); PNG's is 2**31 - 1
MAX_SIDE = {"JPEG": 65500, "WEBP": 16383}


@dataclass(frozen=True)
class GridShape:
    """Where n images of h x w px go in a grid: `cols` a row, `rows` rows, `height` x `width` px
    in all, the gaps of `padding` included."""

    n: int
    rows: int
    cols: int
    height: int
    width: int
    channels: int
    padding: int

    @classmethod
    def of(cls, n: int, channels: int, h: int, w: int, padding: int = GRID_PADDING,
           nrow: int | None = None) -> GridShape:
        """nrow images a row (default ceil(sqrt(n))); whole-number arithmetic, so that a huge
        padding or n gives a huge size to refuse, never a float overflow."""
        cols = min(nrow, n) if nrow else math.isqrt(n - 1) + 1  # ceil(sqrt(n)) for n >= 1
        rows = -(-n // cols)
        return cls(n, rows, cols, rows * (h + padding) + padding, cols * (w + padding) + padding,
                   channels, padding)

    @property
    def size(self) -> int:
        """Bytes of the grid's uint8 pixels."""
        return self.height * self.width * self.channels

    def too_big(self, fmt: str = "PNG") -> str | None:
        """What makes this grid more than one image (MAX_FILE_PIXELS bytes) or than `fmt` holds,
        or None when it fits: checked before any pixel is drawn or allocated."""
        where = (f"a grid of {self.n} images ({self.cols} a row, padding {self.padding}) is "
                 f"{self.width}x{self.height} px" if self.n > 1 else
                 f"one image of {self.width}x{self.height} px")
        if self.size > MAX_FILE_PIXELS:
            return (f"{where}, {self.size / 1e9:.1f} GB of pixels, more than one image holds (at "
                    f"most {MAX_FILE_PIXELS / 1e9:.0f} GB)")
        side = MAX_SIDE.get(fmt)
        if side is not None and max(self.height, self.width) > side:
            return f"{where}, more than {fmt} holds ({side} px a side)"
        return None


def make_grid(images: torch.Tensor, padding: int = GRID_PADDING, nrow: int | None = None
              ) -> torch.Tensor:
    """(n, C, H, W) uint8 -> (H', W', C) uint8 grid, `nrow` images per row (default
    ceil(sqrt(n))), black gaps of `padding` pixels. A grid over MAX_FILE_PIXELS bytes is a
    ConfigError before its memory is asked for (torch's allocation error says nothing useful)."""
    n, c, h, w = images.shape
    shape = GridShape.of(n, c, h, w, padding, nrow)
    if (problem := shape.too_big()) is not None:
        raise ConfigError(f"{problem}; draw fewer or smaller images, or less padding")
    cols = shape.cols
    grid = torch.zeros(shape.height, shape.width, c, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + k * (w + padding)
        grid[y:y + h, x:x + w] = images[i].permute(1, 2, 0)  # (H, W, C)
    return grid


def to_pil(image: torch.Tensor) -> Image.Image:
    """(H, W, C) uint8 -> a PIL image: mode "L" for one channel, "RGB" for three."""
    array = image.numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def png_bytes(grid: torch.Tensor) -> bytes:
    return image_bytes(grid, "PNG")


def image_bytes(image: torch.Tensor, fmt: str, quality: int = QUALITY) -> bytes:
    """(H, W, C) uint8 encoded as PNG, JPEG or WEBP (lossless PNG; the others at `quality`)."""
    buf = io.BytesIO()
    to_pil(image).save(buf, format=fmt, **({} if fmt == "PNG" else {"quality": quality}))
    return buf.getvalue()


def upscale(images: torch.Tensor, scale: int) -> torch.Tensor:
    """(n, C, H, W) -> (n, C, H*scale, W*scale), nearest neighbour: each pixel a block."""
    if scale == 1:
        return images
    return images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)


def write_image_file(images: torch.Tensor, out: Path, nrow: int = 0, scale: int = 1) -> tuple[int, int]:
    """Images to `out` (PNG, JPEG or WEBP by its suffix; its folder made if missing): one image
    alone, without a border; several as a grid of `nrow` a row (0: square). Atomic. Returns
    (width, height) in pixels."""
    fmt = IMAGE_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ConfigError(f"output {out} must end in {', '.join(IMAGE_FORMATS)}")
    images = upscale(images, scale)
    picture = images[0].permute(1, 2, 0) if len(images) == 1 else make_grid(images, nrow=nrow or None)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, image_bytes(picture.contiguous(), fmt))
    except OSError as e:
        raise ConfigError(f"cannot write {out}: {e.strerror or e}") from None
    return picture.shape[1], picture.shape[0]


def save_grid(images: torch.Tensor, path: Path) -> tuple[int, int]:
    """Write images as a PNG grid atomically; returns the grid's (width, height) in pixels."""
    grid = make_grid(images)
    atomic_write(Path(path), png_bytes(grid))
    return grid.shape[1], grid.shape[0]

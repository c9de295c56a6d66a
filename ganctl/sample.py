"""Latents from seeds, generation, grids and PNG output.

One latent per seed: z for seed s is drawn from its own generator on the CPU, so an image
depends on its seed alone, never on the batch it was generated in or on the device.
"""

from __future__ import annotations

import dataclasses
import io
import math
import numbers
import operator
import re
from collections.abc import Callable, Mapping, Sequence, Set, Sized
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from ganctl import checkpoint
from ganctl.config import Config
from ganctl.errors import ConfigError, did_you_mean, shorten
from ganctl.fsutil import atomic_write
from ganctl.models import build_generator
from ganctl.models.base import num_classes
from ganctl.models.generator import has_mapping, images
from ganctl.stored import check_models, stored_config

GRID_PADDING = 2  # pixels between and around the images of a grid
GENERATE_BATCH = 256
MAX_SEED = 2**63 - 1  # what a torch.Generator seed and the seeds of `ganctl sample` reach
MAX_SEEDS = 100_000  # seeds in one call: a typo such as 0-1000000000 is an error, not a hang
Seeds = int | str | range | Sequence[int]  # 7, "0-63,100", range(16), [3, 1, 4]
SEEDS_LIKE = "give one seed or more, like 7, range(16), [3, 1, 4] or '0-63,100'"
TOO_MANY = f"more than {MAX_SEEDS} seeds at once (generate in parts: an image depends on its seed alone)"
SEED_PART = re.compile(r"^([0-9]{1,19})(?:-([0-9]{1,19}))?$")  # 7 or 0-63, ASCII digits: "+7", "٣" fail


def parse_seeds(text: str) -> list[int]:
    """'0-63,100' -> [0, 1, ..., 63, 100]: single seeds and inclusive ranges, comma-separated."""
    seeds: list[int] = []
    for part in text.split(","):
        match = SEED_PART.match(part.strip())
        if match is None:
            what = (f"{shorten(part.strip(), 40)} is not a seed (0 to 2**63 - 1) or a range of them"
                    if part.strip() else "an empty part")
            raise _seeds_error(text, what)
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise _seeds_error(text, f"range {low}-{high} runs backwards (write {high}-{low})")
        if high > MAX_SEED:
            raise _seeds_error(text, f"seed {high} is past the largest, 2**63 - 1")
        if len(seeds) + high - low + 1 > MAX_SEEDS:
            raise _seeds_error(text, TOO_MANY)
        seeds.extend(range(low, high + 1))
    return seeds


def _seeds_error(text: str, what: str) -> ConfigError:
    return ConfigError(f"seeds {shorten(text, 60)}: {what}; write seeds like 0-63,100 (single seeds "
                       "and ranges, comma-separated)")


def seed_list(seeds: Seeds) -> list[int]:
    """The seeds of an int (one seed), a "0-63,100" string, a range or a sequence of ints
    (numpy's and torch's integers and 1-d arrays of them too), each checked to be a whole number
    from 0 to MAX_SEED; from 1 to MAX_SEEDS of them. Not bytes (b"0-3" iterates as the numbers
    48, 45, 51), a dict or a set (no order), nor an iterator (its length is unknown and reading
    it consumes it)."""
    if isinstance(seeds, str):
        return parse_seeds(seeds)
    one = whole(seeds)
    if one is not None:
        return [_seed(one)]
    if (isinstance(seeds, (bool, bytes, bytearray, memoryview, Mapping, Set))
            or not isinstance(seeds, Sized)):
        raise ConfigError(f"seeds {brief_repr(seeds)}: {SEEDS_LIKE}")
    try:
        count = len(seeds)
    except OverflowError:  # range(10**20): more than an index holds
        raise ConfigError(f"seeds {brief_repr(seeds)}: {TOO_MANY}") from None
    except TypeError:  # a 0-d array: Sized, yet without a length
        raise ConfigError(f"seeds {brief_repr(seeds)}: {SEEDS_LIKE}") from None
    if not count:
        raise ConfigError(f"seeds {brief_repr(seeds)}: {SEEDS_LIKE}")
    if count > MAX_SEEDS:
        raise ConfigError(f"{count} seeds: {TOO_MANY}")
    return [_seed(s) for s in seeds]


def whole(value: object) -> int | None:
    """value as an int if it is a whole number: an int or anything with __index__ (numpy's and
    torch's integer scalars), not a bool, 2.0 or "3"; else None."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        return None
    try:
        return operator.index(value)
    except TypeError:  # an array of several, or of floats
        return None


def brief_repr(value: object, limit: int = 100) -> str:
    """repr(value), cut to `limit` characters: a message stays one readable line."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _seed(s: object) -> int:
    """A seed as an int: int or numpy's integers (anything with __index__), not 2.0 or "3"."""
    seed = whole(s)
    if seed is None or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed {brief_repr(s)} is not a whole number from 0 to 2**63 - 1; {SEEDS_LIKE}")
    return seed


def latents_from_seeds(seeds: Sequence[int], z_dim: int, truncation: float | None = None
                       ) -> torch.Tensor:
    """(n, z_dim) latents, row i drawn from a generator seeded with seeds[i]: standard normal, or
    with `truncation` psi the standard normal truncated to [-psi, psi]."""
    if truncation is not None:
        psi = check_truncation(truncation)
        return torch.stack([_truncated(int(s), z_dim, psi) for s in seeds])
    rows = [torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows)


# The largest |z| the inverse CDF below reaches from a uniform draw is 8.29, and erf(psi / sqrt 2)
# is 1.0 in float64 from psi 8.3 on: any psi from here up cuts nothing and gives the same latents.
TRUNCATION_NONE = 10.0


def check_truncation(psi: float) -> float:
    """Truncation psi as a float: a finite number from 0 up (an int, a float, numpy's). Above
    TRUNCATION_NONE it counts as TRUNCATION_NONE, which already cuts nothing: the same latents,
    and no float conversion of a huge int (10**400) that overflows."""
    # (not 0 <= psi < inf is true of NaN too; math.isnan(10**400) would overflow)
    if isinstance(psi, bool) or not isinstance(psi, numbers.Real) or not 0 <= psi < math.inf:
        raise ConfigError(f"truncation must be a finite number from 0 up, like 0.7 (0: z = 0 for "
                          f"every seed; 1 keeps |z| <= 1; leave it out for none), got {brief_repr(psi)}")
    return float(min(psi, TRUNCATION_NONE))


def _truncated(seed: int, z_dim: int, psi: float) -> torch.Tensor:
    """z ~ N(0, 1) truncated to [-psi, psi] by the inverse CDF of the seed's uniform draws:
    z = sqrt(2) erfinv(erf(psi / sqrt(2)) (2u - 1)), so psi = 0 gives z = 0 exactly and a seed's
    z shrinks smoothly towards 0 as psi falls. Computed in float64 on the CPU (deterministic)."""
    u = torch.rand(z_dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u += 2**-54  # the middle of its 2**-53 cell: strictly inside (0, 1), so erfinv stays finite
    bound = math.erf(psi / math.sqrt(2))  # 1.0 from psi ~ 8.3 on: no truncation left
    z = math.sqrt(2) * torch.special.erfinv(bound * (2 * u - 1))
    return (z.clamp_(-psi, psi) + 0.0).float()  # + 0.0: -0.0 becomes 0.0, byte-identical z = 0


@torch.no_grad()
def labels_for_seeds(seeds: Sequence[int], config: Config, class_: int | str | None = None
                     ) -> torch.Tensor | None:
    """The class a conditional model draws each seed's image for: `class_` (an index or a class
    name) for all of them, or by default seed mod the number of classes, so consecutive seeds go
    through every class; None for unconditional models, which take no class."""
    k = num_classes(config)
    if not k:
        if class_ is not None:
            raise ConfigError(f"class {brief_repr(class_)} given, but this model is unconditional (not "
                              "trained conditional): it takes no class; leave the class out")
        return None
    if class_ is None:
        return torch.tensor([int(s) % k for s in seeds], dtype=torch.int64)
    return torch.full((len(seeds),), class_index(class_, config.classes), dtype=torch.int64)


def class_index(class_: int | str, classes: Sequence[str]) -> int:
    """The index of a class given by index or by name, or a ConfigError naming the choices."""
    shown = ", ".join(f"{i} {name}" for i, name in enumerate(classes[:20]))
    shown += " ..." if len(classes) > 20 else ""
    if isinstance(class_, str):
        if class_ in classes:
            return list(classes).index(class_)
        raise ConfigError(f"unknown class {brief_repr(class_)}{did_you_mean(class_[:100], classes)}; "
                          f"this model's classes: {shown}")
    index = whole(class_)  # numpy's integers too
    if index is None or not 0 <= index < len(classes):
        raise ConfigError(f"class {brief_repr(class_)} is not a class index from 0 to {len(classes) - 1} "
                          f"nor a class name; this model's classes: {shown}")
    return index


def seed_latents(G: nn.Module, seeds: Sequence[int], z_dim: int, truncation: float | None = None
                 ) -> torch.Tensor:
    """The seeds' z for G: truncated in z by psi for a generator without a mapping network; a
    generator with one truncates in w instead (generate's `truncation`)."""
    return latents_from_seeds(seeds, z_dim, None if has_mapping(G) else truncation)


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor, device: torch.device,
             c: torch.Tensor | None = None, batch_size: int = GENERATE_BATCH,
             truncation: float | None = None) -> torch.Tensor:
    """Images for latents z (and classes c) as uint8 (n, C, H, W) on the CPU, generated in eval
    mode in chunks of `batch_size` (truncated toward w_avg by psi where G has a mapping network).
    A chunk too big for the device's memory is a ConfigError that says to lower the batch size
    (images do not depend on it)."""
    psi = None if truncation is None else check_truncation(truncation)
    return _in_chunks(G, lambda x, k: images(G, x, k, psi), z, device, c, batch_size)


@torch.no_grad()
def synthesize(G: nn.Module, w: torch.Tensor, device: torch.device,
               batch_size: int = GENERATE_BATCH) -> torch.Tensor:
    """Images for styles w (of a generator with a mapping network), as generate's."""
    return _in_chunks(G, lambda x, k: G.synthesis(x), w, device, None, batch_size)  # type: ignore[operator]


def _in_chunks(G: nn.Module, run: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
               inputs: torch.Tensor, device: torch.device, c: torch.Tensor | None,
               batch_size: int) -> torch.Tensor:
    was_training = G.training
    G.eval()
    chunks = inputs.split(batch_size)
    labels = c.split(batch_size) if c is not None else [None] * len(chunks)
    try:
        out = [to_uint8(run(chunk.to(device), None if k is None else k.to(device)).cpu())
               for chunk, k in zip(chunks, labels, strict=True)]
    except (torch.OutOfMemoryError, MemoryError):
        raise ConfigError(f"out of memory on {device} generating {len(chunks[0])} images at a time; "
                          "lower the batch size (--batch-size, batch_size=): an image depends on its "
                          "seed alone, not on its batch") from None
    finally:
        G.train(was_training)
    return torch.cat(out)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> [0, 255] uint8."""
    return ((x.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


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


# what `ganctl sample OUT` writes, by OUT's suffix
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
QUALITY = 95  # JPEG and WebP (lossy): near enough to the pixels to judge samples by
MAX_FILE_PIXELS = 1 << 30  # bytes of pixels in one grid file (a 16k x 16k RGB image is 0.8 GB)
# the longest side each format's encoder takes (libjpeg: 65500; WebP: 16383); PNG's is 2**31 - 1
MAX_SIDE = {"JPEG": 65500, "WEBP": 16383}


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


def parse_class(text: str, classes: Sequence[str]) -> int | str:
    """`--class` as typed: a class name, else a whole number (an index)."""
    if text in classes or not (text.isascii() and text.isdigit()):
        return text
    return int(text)


def sample_images(loaded: LoadedGenerator, seeds: Sequence[int], device: torch.device, *,
                  truncation: float | None = None, class_: int | str | None = None,
                  batch_size: int = GENERATE_BATCH) -> tuple[torch.Tensor, int]:
    """The seeds' images (n, C, H, W) uint8 and the images per grid row that suit them: with
    class_ "all", one row of the seeds for each class of a conditional model."""
    z = seed_latents(loaded.G, seeds, loaded.config.z_dim, truncation)
    if class_ != "all" or "all" in loaded.config.classes:
        c = labels_for_seeds(seeds, loaded.config, class_)
        return generate(loaded.G, z, device, c, batch_size, truncation), 0
    k = num_classes(loaded.config)
    if not k:
        raise ConfigError("--class all draws a row for each class, but this model is unconditional "
                          "(not trained --conditional): leave --class out")
    rows = [generate(loaded.G, z, device, torch.full((len(seeds),), i, dtype=torch.int64), batch_size,
                     truncation) for i in range(k)]
    return torch.cat(rows), len(seeds)


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


@dataclass(frozen=True)
class LoadedGenerator:
    G: nn.Module  # the EMA generator, in eval mode, on the device
    config: Config
    header: checkpoint.Header


def load_generator(header: checkpoint.Header, device: torch.device, ema: bool = True
                   ) -> LoadedGenerator:
    """Rebuild the generator from a (verified) checkpoint's metadata and load its weights:
    G_ema (the EMA of G's weights, what samples use), or with ema=False G itself."""
    name = "G_ema" if ema else "G"
    config = stored_config(header)
    check_models(header, config, (name,))
    G = build_generator(config)
    tensors = checkpoint.load_tensors(header, (f"{name}.",))
    checkpoint.load_module(G, tensors, name)
    checkpoint.check_finite(header.path, tensors, name)  # a diverged run's G_ema samples black
    # the header without the file's bytes: they are not needed once G is loaded
    return LoadedGenerator(G.to(device).eval(), config, dataclasses.replace(header, blob=None))


def sample_grid(header: checkpoint.Header, out: Path, n: int, seed: int,
                device: torch.device) -> dict:
    """Write an n-image grid from a checkpoint to `out`; seeds seed..seed+n-1."""
    if seed + n > 2**63:
        raise ConfigError(f"seeds {seed}..{seed + n - 1} go past 2**63 - 1; use a smaller --seed")
    return sample_file(load_generator(header, device), out, list(range(seed, seed + n)), device)


def sample_file(loaded: LoadedGenerator, out: Path, seeds: Sequence[int], device: torch.device, *,
                truncation: float | None = None, class_: int | str | None = None, nrow: int = 0,
                scale: int = 1, batch_size: int = GENERATE_BATCH) -> dict:
    """`ganctl sample OUT`: the seeds' images as one file (a grid, or one image alone)."""
    if IMAGE_FORMATS.get(out.suffix.lower()) is None:  # before minutes of generating
        raise ConfigError(f"output {out} must end in {', '.join(IMAGE_FORMATS)}")
    check_file_size(loaded.config, out, len(seeds), class_, nrow, scale)
    images, per_row = sample_images(loaded, seeds, device, truncation=truncation, class_=class_,
                                    batch_size=batch_size)
    width, height = write_image_file(images, out, nrow or per_row, scale)
    return {"out": str(out), "checkpoint": str(loaded.header.path), "step": loaded.header.step,
            "n": len(images), "seeds": compact_seeds(seeds), "truncation": truncation,
            "class": class_, "width": width, "height": height, "device": str(device)}


def check_file_size(config: Config, out: Path, n: int, class_: int | str | None, nrow: int,
                    scale: int) -> None:
    """`ganctl sample OUT`'s picture must fit one file: at most MAX_FILE_PIXELS bytes of pixels
    and, for JPEG and WebP, their encoders' longest side. Checked before a minute of generating
    and an allocation that fails (or swaps)."""
    every_class = class_ == "all" and "all" not in config.classes and num_classes(config) > 0
    per_class = n if every_class else 0  # sample_images: a row of the seeds for each class
    count = n * num_classes(config) if every_class else n
    side = config.resolution * scale
    size = count * config.channels * side**2
    if size > MAX_FILE_PIXELS:
        raise ConfigError(f"{count} images at {side} px are {size / 1e9:.1f} GB of pixels, more than "
                          f"one file holds (at most {MAX_FILE_PIXELS / 1e9:.0f} GB); lower -n or "
                          "--scale, or use --out-dir")
    fmt = IMAGE_FORMATS[out.suffix.lower()]
    shape = (GridShape(1, 1, 1, side, side, config.channels, 0) if count == 1
             else GridShape.of(count, config.channels, side, side, nrow=nrow or per_class or None))
    if (problem := shape.too_big(fmt)) is not None:
        raise ConfigError(f"{out.name}: {problem}; use .png, or set --nrow, or lower -n or --scale")


def compact_seeds(seeds: Sequence[int]) -> str:
    """Seeds as `--seeds` takes them: runs of consecutive seeds as ranges ("0-63,100")."""
    parts: list[str] = []
    start = prev = None
    for s in seeds:
        if start is not None and s == prev + 1:  # type: ignore[operator]
            prev = s
            continue
        if start is not None:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
        start = prev = s
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ",".join(parts)

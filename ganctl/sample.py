"""Generating images: latents from seeds, classes, generation in chunks, loading a generator
from a checkpoint, and `ganctl sample OUT`.

One latent per seed: z for seed s is drawn from its own generator on the CPU, so an image
depends on its seed alone, never on the batch it was generated in or on the device.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ganctl import checkpoint
from ganctl.config import Config
from ganctl.errors import ConfigError, did_you_mean
from ganctl.imagefiles import IMAGE_FORMATS, MAX_FILE_PIXELS, GridShape, write_image_file
from ganctl.models import build_generator
from ganctl.models.base import num_classes
from ganctl.models.generator import has_mapping, images, set_noise_mode
from ganctl.seeds import brief_repr, compact_seeds, whole
from ganctl.stored import check_models, stored_config

GENERATE_BATCH = 256


def latents_from_seeds(seeds: Sequence[int], z_dim: int, truncation: float | None = None,
                       nvlabs: bool = False) -> torch.Tensor:
    """(n, z_dim) latents, row i drawn from a generator seeded with seeds[i]: standard normal, or
    with `truncation` psi the standard normal truncated to [-psi, psi]. nvlabs=True: as NVlabs'
    generate.py draws them (nvlabs_latents), so their networks make their images for their
    seeds."""
    if nvlabs:
        return nvlabs_latents(seeds, z_dim, truncation)
    if truncation is not None:
        psi = check_truncation(truncation)
        return torch.stack([_truncated(int(s), z_dim, psi) for s in seeds])
    rows = [torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows)


NVLABS_SEEDS = 2**32  # np.random.RandomState takes seeds below this


def check_nvlabs_seeds(seeds: Sequence[int]) -> None:
    """Seeds NVlabs' generate.py can take (0 to 2**32 - 1), or a ConfigError."""
    if seeds and not 0 <= max(seeds) < NVLABS_SEEDS:
        raise ConfigError(f"seed {max(seeds)} is past NVlabs' seeds (0 to 2**32 - 1, what "
                          "np.random.RandomState takes); give smaller seeds with --nvlabs-seeds")


def nvlabs_latents(seeds: Sequence[int], z_dim: int, truncation: float | None = None
                   ) -> torch.Tensor:
    """(n, z_dim) latents as NVlabs' generate.py draws them: row i is
    np.random.RandomState(seeds[i]).randn(1, z_dim) in float64, made float32 (as their mapping
    network does first). Untruncated: their truncation is in w, which ganctl's generators with a
    mapping network share; one without has no such truncation (a ConfigError)."""
    import numpy as np

    if truncation is not None:
        raise ConfigError("NVlabs' seeds give untruncated latents (their truncation moves w "
                          "toward w_avg): truncation with --nvlabs-seeds needs a generator with a "
                          "mapping network (stylegan2)")
    check_nvlabs_seeds(seeds)
    rows = [torch.from_numpy(np.random.RandomState(int(s)).randn(1, z_dim)[0]) for s in seeds]
    return torch.stack(rows).float()


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


def seed_latents(G: nn.Module, seeds: Sequence[int], z_dim: int, truncation: float | None = None,
                 nvlabs: bool = False) -> torch.Tensor:
    """The seeds' z for G: truncated in z by psi for a generator without a mapping network; a
    generator with one truncates in w instead (generate's `truncation`). nvlabs=True: NVlabs'
    latents for their seeds (nvlabs_latents)."""
    return latents_from_seeds(seeds, z_dim, None if has_mapping(G) else truncation, nvlabs)


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
    z = seed_latents(loaded.G, seeds, loaded.config.z_dim, truncation, loaded.nvlabs_seeds)
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


@dataclass(frozen=True)
class LoadedGenerator:
    G: nn.Module  # the EMA generator, in eval mode, on the device
    config: Config
    header: checkpoint.Header
    nvlabs_seeds: bool = False  # seeds give NVlabs' latents (nvlabs_latents), not ganctl's


def load_generator(header: checkpoint.Header, device: torch.device, ema: bool = True,
                   noise_mode: str = "const", nvlabs_seeds: bool = False) -> LoadedGenerator:
    """Rebuild the generator from a (verified) checkpoint's metadata and load its weights:
    G_ema (the EMA of G's weights, what samples use), or with ema=False G itself. noise_mode:
    the per-pixel noise of a generator that takes it (const: a seed's image never changes).
    nvlabs_seeds: its seeds give the latents NVlabs' generate.py draws."""
    name = "G_ema" if ema else "G"
    config = stored_config(header)
    check_models(header, config, (name,))
    G = build_generator(config)
    tensors = checkpoint.load_tensors(header, (f"{name}.",))
    checkpoint.load_module(G, tensors, name)
    checkpoint.check_finite(header.path, tensors, name)  # a diverged run's G_ema samples black
    set_noise_mode(G, noise_mode)
    # the header without the file's bytes: they are not needed once G is loaded
    return LoadedGenerator(G.to(device).eval(), config, dataclasses.replace(header, blob=None),
                           nvlabs_seeds)


def sample_file(loaded: LoadedGenerator, out: Path, seeds: Sequence[int], device: torch.device, *,
                truncation: float | None = None, class_: int | str | None = None, nrow: int = 0,
                scale: int = 1, batch_size: int = GENERATE_BATCH) -> dict:
    """`ganctl sample OUT`: the seeds' images as one file (a grid, or one image alone); OUT is
    named for its format (api.files.sample_to_file checks it, before minutes of generating)."""
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

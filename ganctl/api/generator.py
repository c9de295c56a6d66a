"""A checkpoint's generator from Python: load() rebuilds it from the file alone; its sample(),
images() and grid() return images in memory (files: api/files.py)."""

from __future__ import annotations

import operator

import torch
from PIL import Image

from ganctl.api.checks import (
    PathLike,
    check_noise_mode,
    device_name,
    flag,
    ganctl_errors,
    locate,
    whole_number,
)
from ganctl.config import BOUNDS
from ganctl.device import resolve_device
from ganctl.errors import ConfigError
from ganctl.imagefiles import GRID_PADDING, GridShape, make_grid, to_pil
from ganctl.models.base import num_classes
from ganctl.models.generator import current_noise_mode, set_noise_mode
from ganctl.sample import (
    GENERATE_BATCH,
    LoadedGenerator,
    check_truncation,
    generate,
    labels_for_seeds,
    load_generator,
    seed_latents,
)
from ganctl.seeds import MAX_SEEDS, Seeds, seed_list

MAX_PADDING = 4096  # pixels between a grid's images (beyond, the grid is too large anyway)
DEFAULT_N = 64  # images when neither seeds nor n is given: `ganctl sample`'s default
MAX_BATCH = int(BOUNDS["batch_size"][1])  # images per forward pass, as `ganctl sample --batch-size`
MAX_SAMPLE_BYTES = 1 << 32  # uint8 pixels one sample() call returns (4 GiB): more, drawn in parts


class Generator:
    """A checkpoint's EMA generator (G_ema, in eval mode), rebuilt from the file alone.

    `config` is the run's Config, `step` the checkpoint's step, `checkpoint` its path, `device`
    where G runs, `G` the torch module. Images come back as uint8 on the CPU, one latent per
    seed, so an image depends on its seed alone (not on the batch it was made in).
    Made by ganctl.load; example: G = ganctl.load("runs/m"); x = G.sample(seeds="0-15").
    """

    def __init__(self, loaded: LoadedGenerator, device: torch.device) -> None:
        self.loaded, self.device = loaded, device
        self.G, self.config, self.step = loaded.G, loaded.config, loaded.header.step
        self.checkpoint = loaded.header.path

    def __repr__(self) -> str:
        c = self.config
        return (f"Generator({c.arch} {c.resolution}x{c.resolution}x{c.channels}, step {self.step}, "
                f"{str(self.checkpoint)!r}, device {self.device})")

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def noise_mode(self) -> str | None:
        """A StyleGAN2's per-pixel noise (const, random, none); None for a G without noise."""
        return current_noise_mode(self.G)

    @noise_mode.setter
    def noise_mode(self, mode: str) -> None:
        set_noise_mode(self.G, check_noise_mode(mode))

    @property
    def num_classes(self) -> int:
        """Classes a conditional model draws (0: unconditional)."""
        return num_classes(self.config)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names class_ may name (empty for an unconditional model, even one trained
        on labelled data: config.classes holds the data's)."""
        return self.config.classes if self.num_classes else ()

    @ganctl_errors
    def sample(self, seeds: Seeds | None = None, *, n: int | None = None,
               truncation: float | None = None, class_: int | str | None = None,
               batch_size: int = GENERATE_BATCH) -> torch.Tensor:
        """Images as a uint8 tensor (N, C, H, W) on the CPU, one per seed.

        seeds: an int (one image), a range, a list, or a string like "0-63,100"; n=16 is
        seeds range(16); neither gives seeds 0-63. truncation psi draws z from the standard
        normal truncated to [-psi, psi] (None: untruncated, the images `ganctl sample` makes).
        Without a mapping network z itself is truncated: lower psi trades variety for typical
        images, psi = 0 gives z = 0, one image for every seed (per class), and from about 8.3
        up nothing is cut (any larger psi gives the same images); a generator with one
        truncates its styles toward w_avg instead (w_avg + psi (w - w_avg)). class_: for
        a conditional model, an index or a name of `classes` for every image (None: seed mod the
        number of classes, every class in turn); an unconditional model takes none. batch_size:
        images per forward pass (memory, not the images), 1 to 65,536. Integers may be numpy's.
        One call draws at most 100,000 images and 4 GiB of pixels: draw more in parts. Every
        argument is checked before anything is generated (a ConfigError, as `ganctl sample`'s).

        Example: x = G.sample(seeds=range(16), truncation=0.7, class_="circle")
        """
        chosen = self._seeds(seeds, n, truncation, batch_size)
        return self._draw(chosen, truncation, class_, batch_size)

    def _seeds(self, seeds: Seeds | None, n: int | None, truncation: float | None,
               batch_size: int) -> list[int]:
        """The seeds asked for, once every argument but the class is checked: cheap checks first,
        so a mistake costs no generating."""
        chosen = chosen_seeds(seeds, n)
        whole_number("batch_size", batch_size, 1, MAX_BATCH)
        if truncation is not None:
            check_truncation(truncation)
        c = self.config
        size = len(chosen) * c.channels * c.resolution**2
        if size > MAX_SAMPLE_BYTES:  # before an allocation that fails, or swaps, after minutes
            raise ConfigError(f"{len(chosen):,} images at {c.resolution}x{c.resolution}x{c.channels} "
                              f"are {size / 1e9:.1f} GB of pixels, more than one call returns (at most "
                              f"{MAX_SAMPLE_BYTES / 1e9:.1f} GB); ask for fewer seeds a call (an image "
                              "depends on its seed alone)")
        return chosen

    def _draw(self, chosen: list[int], truncation: float | None, class_: int | str | None,
              batch_size: int) -> torch.Tensor:
        z = seed_latents(self.G, chosen, self.z_dim, truncation, self.loaded.nvlabs_seeds)
        c = labels_for_seeds(chosen, self.config, class_)
        return generate(self.G, z, self.device, c, operator.index(batch_size), truncation)

    @ganctl_errors
    def images(self, seeds: Seeds | None = None, *, n: int | None = None,
               truncation: float | None = None, class_: int | str | None = None,
               batch_size: int = GENERATE_BATCH) -> list[Image.Image]:
        """The images of sample() as PIL images (mode "L" for one channel, "RGB" for three).

        Example: for seed, image in zip(range(4), G.images(n=4)): image.save(f"{seed}.png")
        """
        x = self.sample(seeds, n=n, truncation=truncation, class_=class_, batch_size=batch_size)
        return [to_pil(image.permute(1, 2, 0)) for image in x]  # (H, W, C)

    @ganctl_errors
    def grid(self, seeds: Seeds | None = None, *, n: int | None = None, nrow: int | None = None,
             padding: int = GRID_PADDING, truncation: float | None = None,
             class_: int | str | None = None, batch_size: int = GENERATE_BATCH) -> Image.Image:
        """The images of sample() in one PIL image: `nrow` per row (default ceil(sqrt(N))),
        `padding` black pixels between and around them; G.grid(n=64) is the grid
        `ganctl sample -n 64` writes. A grid of more than 1 GiB of pixels is refused, before
        anything is generated.

        Example: G.grid(seeds="0-15", nrow=8).save("grid.png")
        """
        rows = None if nrow is None else whole_number("nrow", nrow, 1, MAX_SEEDS)
        gap = whole_number("padding", padding, 0, MAX_PADDING)
        chosen = self._seeds(seeds, n, truncation, batch_size)
        c = self.config
        shape = GridShape.of(len(chosen), c.channels, c.resolution, c.resolution, gap, rows)
        if (problem := shape.too_big()) is not None:  # before generating, and before torch's
            raise ConfigError(f"{problem}; draw fewer images or less padding, or take images()")
        return to_pil(make_grid(self._draw(chosen, truncation, class_, batch_size), gap, rows))


def chosen_seeds(seeds: Seeds | None, n: int | None, default: int = DEFAULT_N,
                 limit: int = MAX_SEEDS) -> list[int]:
    """The seeds asked for: `seeds`, or range(n), or range(default); at most `limit`."""
    if seeds is not None and n is not None:
        raise ConfigError("give seeds or n, not both (n=16 is seeds=range(16))")
    if n is None:
        return seed_list(range(default) if seeds is None else seeds, limit)
    return seed_list(range(whole_number("n", n, 1, limit, " (the images, seeds 0..n-1)")), limit)


@ganctl_errors
def load(target: PathLike | None = None, device: str = "auto", *, ema: bool = True,
         nvlabs_seeds: bool = False, noise_mode: str = "const") -> Generator:
    """The EMA generator of a checkpoint, as `ganctl sample --ckpt` finds it.

    target: a run directory (its newest checkpoint that verifies), a checkpoint file, "latest"
    or "best" (the newest run's under ./runs, or GANCTL_RUNS; RUN/checkpoints/best for a run's),
    None (the newest run's newest checkpoint), or an NVlabs network FILE.pkl (imported on the
    fly by a reader that runs nothing in it). The file is verified against its checksum and
    nothing in it is run (no pickle). Damaged checkpoints passed over are warned about.
    device: auto, cpu, cuda, cuda:K or mps. ema=False: G itself rather than its EMA G_ema.
    nvlabs_seeds=True: seeds give the latents NVlabs' generate.py draws
    (np.random.RandomState(seed).randn(1, z_dim)): their network, their images for their seeds.
    noise_mode: a StyleGAN2's per-pixel noise: const (a seed's image never changes), random or
    none (G.noise_mode changes it later).

    Example: G = ganctl.load("runs/m"); G.grid(n=64).save("grid.png")
    """
    flag("ema", ema)
    flag("nvlabs_seeds", nvlabs_seeds)
    check_noise_mode(noise_mode)
    header = locate(target)
    dev = resolve_device(device_name(device))
    return Generator(load_generator(header, dev, ema, noise_mode, nvlabs_seeds), dev)



"""Model registry: architecture name -> Architecture (check, build, build_generator).

Models are pure nn.Modules: no I/O, no device choice. A checkpoint's config names the
architecture, so any model is rebuilt from the file alone. A new architecture is one file
implementing models.base.Architecture plus one line here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ganctl.config import PROJECTED, Config
from ganctl.errors import ConfigError, lookup
from ganctl.models.backbone import BACKBONES, attached
from ganctl.models.base import Architecture
from ganctl.models.dcgan import DCGAN
from ganctl.models.mlp import MLP
from ganctl.models.projected import backbone_size
from ganctl.models.resnet import ResNet
from ganctl.models.stylegan2 import StyleGAN2
from ganctl.weights import Progress, locate

ARCHS: dict[str, Architecture] = {arch.name: arch for arch in (DCGAN(), ResNet(), MLP(),
                                                               StyleGAN2())}


def get_arch(name: str) -> Architecture:
    return lookup(ARCHS, name, "arch")


def build_models(config: Config) -> tuple[nn.Module, nn.Module]:
    """Fresh, initialised (G, D) for the config."""
    return get_arch(config.arch).build(config)


def build_generator(config: Config) -> nn.Module:
    """G's structure alone (weights are loaded from a checkpoint)."""
    return get_arch(config.arch).build_generator(config)


MAX_PARAMETERS = 2**30  # per network: beyond the largest GANs published (about 1e9); 4 GiB of fp32


CPU_PARAMETERS = 10_000_000  # G and D together: beyond this a CPU step takes seconds or more


def parameter_counts(config: Config) -> dict[str, int]:
    """G's and D's parameters, counted on the meta device (nothing is allocated)."""
    arch = get_arch(config.arch)
    with torch.device("meta"):
        G, D = arch.build_generator(config), arch.build_discriminator(config)
    return {name: sum(p.numel() for p in net.parameters()) for name, net in (("G", G), ("D", D))}


def backbone_names(config: Config) -> list[str]:
    """The frozen backbones the config's D stands on (its structure, on the meta device)."""
    with torch.device("meta"):
        return list(attached(get_arch(config.arch).build_discriminator(config)))


def fetch_backbones(config: Config, download: bool = True,
                    progress: Callable[[str, int], Progress] | None = None) -> None:
    """Each backbone's weights file found, downloaded (with a progress display) if need be, before
    the networks are built (which find it then)."""
    for name in backbone_names(config):
        locate(BACKBONES[name].weights, config.backbone_weights or None, download, progress)


def describe_model(config: Config) -> str:
    """The architecture, and a projected D's backbone and size: the start line's words."""
    if config.discriminator != PROJECTED:
        return config.arch
    size = backbone_size(config.resolution, config.backbone_resolution)
    return f"{config.arch} G + projected D (EfficientNet-Lite0 at {size} px)"


PROJECTED_CPU_SIZE = 64  # a projected D's backbone above this size is a GPU's work


def cpu_note(config: Config) -> str | None:
    """What to say when networks this large are to train on a CPU (None: they are small)."""
    size = backbone_size(config.resolution, config.backbone_resolution)
    if config.discriminator == PROJECTED and size > PROJECTED_CPU_SIZE:
        return (f"the projected D runs EfficientNet-Lite0 on every image at {size} px, a GPU's "
                f"work: on a CPU each step takes seconds; --backbone-resolution "
                f"{PROJECTED_CPU_SIZE} costs about {round((size / PROJECTED_CPU_SIZE) ** 2)}x "
                "less (coarser features)")
    total = sum(parameter_counts(config).values())
    if total <= CPU_PARAMETERS:
        return None
    dims = "--z-dim and --w-dim" if get_arch(config.arch).mapping else "--z-dim"
    return (f"G and D have {total / 1e6:.0f}M parameters, a GPU's work: on a CPU each step takes "
            f"seconds or more; to try {config.arch} here, lower --g-width and --d-width (32, say) "
            f"and {dims}")


def check_config(config: Config) -> None:
    """Raise ConfigError if the architecture cannot be built for this config, or would be too
    large to build at all (counted on the meta device: nothing is allocated)."""
    get_arch(config.arch).check(config)
    for name, count in parameter_counts(config).items():
        if count > MAX_PARAMETERS:
            raise ConfigError(f"{name} would have {count:,} parameters, more than ganctl builds "
                              f"({MAX_PARAMETERS:,}); lower --g-width, --d-width or --z-dim")

"""Model registry: architecture name -> Architecture (check, build, build_generator).

Models are pure nn.Modules: no I/O, no device choice. A checkpoint's config names the
architecture, so any model is rebuilt from the file alone. A new architecture is one file
implementing models.base.Architecture plus one line here.
"""

from __future__ import annotations

import torch
from torch import nn

from ganctl.config import Config
from ganctl.errors import ConfigError, lookup
from ganctl.models.base import Architecture
from ganctl.models.dcgan import DCGAN
from ganctl.models.mlp import MLP
from ganctl.models.resnet import ResNet
from ganctl.models.stylegan2 import StyleGAN2

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


def check_config(config: Config) -> None:
    """Raise ConfigError if the architecture cannot be built for this config, or would be too
    large to build at all (counted on the meta device: nothing is allocated)."""
    arch = get_arch(config.arch)
    arch.check(config)
    with torch.device("meta"):
        G, D = arch.build_generator(config), arch.build_discriminator(config)
    for name, net in (("G", G), ("D", D)):
        count = sum(p.numel() for p in net.parameters())
        if count > MAX_PARAMETERS:
            raise ConfigError(f"{name} would have {count:,} parameters, more than ganctl builds "
                              f"({MAX_PARAMETERS:,}); lower --g-width, --d-width or --z-dim")

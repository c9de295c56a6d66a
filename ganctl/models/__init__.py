"""Model registry: architecture name -> Architecture (check, build, build_generator).

Models are pure nn.Modules: no I/O, no device choice. A checkpoint's config names the
architecture, so any model is rebuilt from the file alone. A new architecture is one file
implementing models.base.Architecture plus one line here.
"""

from __future__ import annotations

from torch import nn

from ganctl.config import Config
from ganctl.errors import lookup
from ganctl.models.base import Architecture
from ganctl.models.dcgan import DCGAN
from ganctl.models.mlp import MLP
from ganctl.models.resnet import ResNet

ARCHS: dict[str, Architecture] = {arch.name: arch for arch in (DCGAN(), ResNet(), MLP())}


def get_arch(name: str) -> Architecture:
    return lookup(ARCHS, name, "arch")


def build_models(config: Config) -> tuple[nn.Module, nn.Module]:
    """Fresh, initialised (G, D) for the config."""
    return get_arch(config.arch).build(config)


def build_generator(config: Config) -> nn.Module:
    """G's structure alone (weights are loaded from a checkpoint)."""
    return get_arch(config.arch).build_generator(config)


def check_config(config: Config) -> None:
    """Raise ConfigError if the architecture cannot be built for this config."""
    get_arch(config.arch).check(config)

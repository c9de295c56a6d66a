"""Model registry: architecture name -> module with check, build and build_generator(config).

Models are pure nn.Modules: no I/O, no device choice. A checkpoint's config names the
architecture, so any model is rebuilt from the file alone.
"""

from __future__ import annotations

from types import ModuleType

from torch import nn

from ganctl.config import Config
from ganctl.errors import lookup
from ganctl.models import dcgan

ARCHS: dict[str, ModuleType] = {"dcgan": dcgan}


def _arch(name: str) -> ModuleType:
    return lookup(ARCHS, name, "arch")


def build_models(config: Config) -> tuple[nn.Module, nn.Module]:
    """Fresh, initialised (G, D) for the config."""
    return _arch(config.arch).build(config)


def build_generator(config: Config) -> nn.Module:
    """G's structure alone (weights are loaded from a checkpoint)."""
    return _arch(config.arch).build_generator(config)


def check_config(config: Config) -> None:
    """Raise ConfigError if the architecture cannot be built for this config."""
    _arch(config.arch).check(config)

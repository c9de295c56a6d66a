"""The interface every architecture implements, and what its networks accept.

G(z, c=None) maps (B, z_dim) latents (and, for conditional models, (B,) class indices) to
(B, C, R, R) images in [-1, 1]; D(x, c=None) maps images (and classes) to (B,) logits.
Unconditional networks accept c and ignore it, so the step passes labels unconditionally.
"""

from __future__ import annotations

from abc import ABC
from typing import Any, ClassVar

from torch import nn

from ganctl.config import OWN, PROJECTED, Config
from ganctl.errors import ConfigError
from ganctl.models.efficientnet import STRIDE
from ganctl.models.layers import spectral_norm_all
from ganctl.models.projected import ProjectedD, backbone_size, check_size


def penalised(config: Config) -> bool:
    """A gradient penalty on D's input, which BatchNorm's batch statistics would blur."""
    return config.loss == "wgan-gp" or config.r1 > 0 or config.r2 > 0


def penalty_name(config: Config) -> str:
    return "wgan-gp" if config.loss == "wgan-gp" else "R1/R2"


def num_classes(config: Config) -> int:
    """Classes a conditional network is built for (0: unconditional)."""
    return len(config.classes) if config.conditional else 0


class Architecture(ABC):
    """One architecture: which configs it can build, and its (G, D)."""

    name: ClassVar[str]
    resolutions: ClassVar[tuple[int, ...]]
    spectral_norm_default: ClassVar[bool] = False  # what spectral_norm "auto" means here
    mapping: ClassVar[bool] = False  # G has a mapping network (models.generator): w, w_avg, styles
    folder_resolution: ClassVar[int] = 64  # the largest a folder's images default to
    # compiled with CUDA graphs (reduce-overhead), G and D measured faster than in the default
    # mode on a GPU: what --compile-mode auto picks there
    graphs_faster: ClassVar[bool] = False
    # G(z_dim, resolution, channels, width, classes) and D(resolution, channels, width, classes)
    generator: ClassVar[type[nn.Module]]
    discriminator: ClassVar[type[nn.Module]]

    def check(self, config: Config) -> None:
        """Raise ConfigError if this architecture cannot be built for `config`."""
        if config.resolution not in self.resolutions:
            raise ConfigError(f"{self.name} does not support resolution {config.resolution}; use "
                              f"one of {', '.join(map(str, self.resolutions))}")
        if config.discriminator == PROJECTED:
            size = backbone_size(config.resolution, config.backbone_resolution)
            if wrong := check_size(size):
                raise ConfigError(f"--backbone-resolution {size}: give {wrong}, such as "
                                  f"{max(round(size / STRIDE), 1) * STRIDE}")

    def notes(self, config: Config) -> list[str]:
        """What the architecture changes on its own for `config`, to tell the user."""
        if config.discriminator == PROJECTED and penalised(config):
            return [f"{penalty_name(config)}: the projected D's level Ds are built without "
                    "BatchNorm (the gradient penalty is per image, and BatchNorm mixes the images "
                    "of a batch)"]
        return self.own_notes(config) if config.discriminator == OWN else []

    def own_notes(self, config: Config) -> list[str]:
        """What the architecture changes in its own D for `config`."""
        return []

    def spectral_norm(self, config: Config) -> bool:
        """Whether D is spectrally normalised ("auto": the architecture's D as it is built by
        default; a projected D's trained layers always, as Projected GAN's)."""
        default = self.spectral_norm_default if config.discriminator == OWN else True
        return config.spectral_norm == "on" or (config.spectral_norm == "auto" and default)

    def build(self, config: Config) -> tuple[nn.Module, nn.Module]:
        """Fresh (G, D) with their initial weights (drawn from torch's global generator), D
        spectrally normalised where asked. On the meta device (shapes only: inspect, checkpoint
        checks) there is nothing to initialise. A projected D keeps torch's initialisation."""
        G, D = self.build_generator(config), self.build_discriminator(config)
        for net in (G, D) if config.discriminator == OWN else (G,):
            if not any(p.is_meta for p in net.parameters()):
                self.init_weights(net)
        if self.spectral_norm(config):
            spectral_norm_all(D)
        return G, D

    def build_generator(self, config: Config) -> nn.Module:
        """G's structure (weights as torch's layers draw them; a checkpoint's are loaded)."""
        self.check(config)
        return self.generator(config.z_dim, config.resolution, config.channels, config.g_width,
                              num_classes(config))

    def build_discriminator(self, config: Config) -> nn.Module:
        """D's structure: the architecture's own, or a projected D (--discriminator)."""
        self.check(config)
        if config.discriminator == PROJECTED:
            return ProjectedD(config.resolution, config.channels, config.d_width,
                              num_classes(config), config.backbone_resolution,
                              batchnorm=not penalised(config))
        return self.own_discriminator(config)

    def own_discriminator(self, config: Config) -> nn.Module:
        """The architecture's own D."""
        return self.discriminator(config.resolution, config.channels, config.d_width,
                                  num_classes(config), **self.discriminator_options(config))

    def discriminator_options(self, config: Config) -> dict[str, Any]:
        """Keyword arguments of this architecture's D beyond the common ones."""
        return {}

    def init_weights(self, net: nn.Module) -> None:  # noqa: B027 (optional: torch's init)
        """The architecture's own initialisation of a freshly built network (default: torch's)."""

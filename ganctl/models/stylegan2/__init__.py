"""StyleGAN2 (Karras et al. 2020) as NVlabs' stylegan2-ada-pytorch builds it, in plain PyTorch:
a skip generator with a mapping network and a residual (or plain) discriminator, with their
parameter and buffer names, so that their trained networks load with a plain copy
(ganctl/importers reads their files).

The config's settings are NVlabs' init arguments: z_dim, w_dim (0: z_dim), mapping_layers,
channel_base, g_width and d_width (each network's channel_max), reduced_res (num_fp16_res),
conv_clamp (0: none), mbstd_group and d_arch.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ganctl.config import OWN, Config
from ganctl.errors import ConfigError
from ganctl.models.base import Architecture, num_classes
from ganctl.models.stylegan2.discriminator import Discriminator
from ganctl.models.stylegan2.generator import Generator

D_MAPPING_LAYERS = 8  # D's class mapping: NVlabs' default, which their training never changes


def generator_kwargs(config: Config) -> dict[str, Any]:
    """NVlabs' Generator init arguments for `config`."""
    return dict(z_dim=config.z_dim, c_dim=num_classes(config), w_dim=config.w_dim or config.z_dim,
                img_resolution=config.resolution, img_channels=config.channels,
                mapping_layers=config.mapping_layers, channel_base=config.channel_base,
                channel_max=config.g_width, num_fp16_res=config.reduced_res,
                conv_clamp=config.conv_clamp or None)


def discriminator_kwargs(config: Config) -> dict[str, Any]:
    """NVlabs' Discriminator init arguments for `config`."""
    return dict(c_dim=num_classes(config), img_resolution=config.resolution,
                img_channels=config.channels, architecture=config.d_arch,
                channel_base=config.channel_base, channel_max=config.d_width,
                num_fp16_res=config.reduced_res, conv_clamp=config.conv_clamp or None,
                mbstd_group_size=config.mbstd_group, mapping_layers=D_MAPPING_LAYERS)


class StyleGAN2(Architecture):
    name = "stylegan2"
    generator = Generator
    discriminator = Discriminator
    resolutions = (32, 64, 128, 256, 512, 1024)
    mapping = True
    folder_resolution = 1024  # a folder of photos trains at their size, as NVlabs' does

    def check(self, config: Config) -> None:
        super().check(config)
        if config.channel_base < config.resolution:
            raise ConfigError(f"--channel-base {config.channel_base} leaves the {config.resolution} px "
                              f"blocks without feature maps (they get channel-base / resolution); "
                              f"give at least {config.resolution} (NVlabs use 16384 or 32768)")
        if config.spectral_norm == "on" and config.discriminator == OWN:
            raise ConfigError("stylegan2 does not use spectral normalisation (its D is regularised "
                              "by R1: --r1); give --no-spectral-norm (a preset may have turned "
                              "it on)")

    def build_generator(self, config: Config) -> nn.Module:
        self.check(config)
        return Generator(**generator_kwargs(config))

    def own_discriminator(self, config: Config) -> nn.Module:
        return Discriminator(**discriminator_kwargs(config))

"""Named presets: tested settings for a model, a loss and a dataset (`train --preset NAME`).

They sit between a dataset's own defaults and a --config file: defaults < dataset preset <
named preset < config file < flags, so an explicit flag always wins. The numbers behind each
preset are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ganctl.errors import lookup


@dataclass(frozen=True)
class Preset:
    description: str
    settings: dict[str, Any] = field(default_factory=dict)


_CIFAR = {"dataset": "cifar10", "resolution": 32, "channels": 3}
_SNGAN = {**_CIFAR, "arch": "resnet", "loss": "hinge", "spectral_norm": "on", "z_dim": 128,
          "g_width": 32, "d_width": 64, "batch_size": 64, "lr_g": 1e-4, "lr_d": 4e-4,
          "beta1": 0.0, "beta2": 0.9, "d_steps": 1}

PRESETS: dict[str, Preset] = {
    "dcgan-celeba64": Preset(
        "the article's DCGAN on CelebA faces at 64x64: BCE, Adam 2e-4, betas (0.5, 0.999)",
        {"dataset": "celeba", "resolution": 64, "channels": 3, "arch": "dcgan", "loss": "bce",
         "z_dim": 100, "g_width": 64, "d_width": 64, "batch_size": 128, "lr_g": 2e-4,
         "lr_d": 2e-4, "beta1": 0.5, "beta2": 0.999}),
    "dcgan-cifar10": Preset(
        "the article's DCGAN on CIFAR-10 at 32x32 (the baseline the others must beat)",
        {**_CIFAR, "arch": "dcgan", "loss": "bce", "z_dim": 100, "g_width": 64, "d_width": 64,
         "batch_size": 64, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5, "beta2": 0.999}),
    "sngan-cifar10": Preset(
        "SNGAN on CIFAR-10: residual G and D, spectral norm, hinge loss, TTUR",
        _SNGAN),
    "cgan-cifar10": Preset(
        "class-conditional SNGAN on CIFAR-10: conditional BatchNorm in G, projection D",
        {**_SNGAN, "conditional": True}),
    "r3-cifar10": Preset(
        "after R3GAN's recipe: residual G and D, relativistic pairing loss with R1 and R2, no "
        "spectral norm",
        {**_CIFAR, "arch": "resnet", "loss": "rpgan", "spectral_norm": "off", "r1": 0.1,
         "r2": 0.1, "r1_every": 4, "z_dim": 128, "g_width": 32, "d_width": 64,
         "batch_size": 64, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.0, "beta2": 0.99}),
    "mlp-mnist": Preset(
        "the article's fully connected GAN on MNIST digits at 28x28",
        {"dataset": "mnist", "resolution": 28, "channels": 1, "arch": "mlp", "loss": "bce",
         "z_dim": 100, "g_width": 64, "d_width": 64, "batch_size": 64, "lr_g": 2e-4,
         "lr_d": 2e-4, "beta1": 0.5, "beta2": 0.999}),
    "small-data": Preset(
        "a few thousand images of your own (--dataset FOLDER): DiffAugment and R1 keep D from "
        "memorising them",
        {"arch": "resnet", "loss": "hinge", "spectral_norm": "on", "augment": "diffaug",
         "r1": 1.0, "r1_every": 16, "z_dim": 128, "g_width": 32, "d_width": 64,
         "batch_size": 32, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.0, "beta2": 0.99}),
}


def get(name: str) -> Preset:
    return lookup(PRESETS, name, "preset")

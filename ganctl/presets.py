"""Named presets: tested settings for a model, a loss and a dataset (`train --preset NAME`).

They sit between a dataset's own defaults and a --config file: defaults < dataset preset <
named preset < config file < flags, so an explicit flag always wins. The numbers behind each
preset are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ganctl.config import PROJECTED
from ganctl.errors import lookup
from ganctl.models.projected import backbone_size


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
        "a few thousand images of your own (--dataset FOLDER): adaptive augmentation (ADA) and R1 "
        "keep D from memorising them",
        {"arch": "resnet", "loss": "hinge", "spectral_norm": "on", "augment": "ada",
         "r1": 1.0, "r1_every": 16, "z_dim": 128, "g_width": 32, "d_width": 64,
         "batch_size": 32, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.0, "beta2": 0.99}),
    # Projected GAN's fastgan config (their train.py): hinge, DiffAugment colour, translation
    # and cutout, Adam lr 2e-4 with betas (0, 0.99), batch 64, EMA half-life batch * 10 / 32
    # thousand images without ramp-up; the backbone at 224 px
    "projected-cifar10": Preset(
        "Projected GAN on CIFAR-10: DCGAN's G against a projected D on a frozen ImageNet "
        "EfficientNet-Lite0 (hinge, DiffAugment), Projected GAN's optimiser and EMA",
        {**_CIFAR, "arch": "dcgan", "discriminator": "projected", "loss": "hinge",
         "augment": "diffaug", "z_dim": 100, "g_width": 64, "d_width": 64, "batch_size": 64,
         "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.0, "beta2": 0.99, "ema_kimg": 20.0}),
    "projected-small-data": Preset(
        "a few thousand images of your own (--dataset FOLDER) against a projected D: pretrained "
        "features and DiffAugment keep D from memorising them (Projected GAN's data efficiency)",
        {"arch": "resnet", "discriminator": "projected", "loss": "hinge", "augment": "diffaug",
         "z_dim": 128, "g_width": 32, "d_width": 64, "batch_size": 32, "lr_g": 2e-4,
         "lr_d": 2e-4, "beta1": 0.0, "beta2": 0.99, "ema_kimg": 10.0}),
}


# StyleGAN2 as NVlabs' stylegan2-ada-pytorch trains it (train.py's --cfg specs): the settings
# every config shares, then each config's own. ganctl's g_width/d_width are their channel_max,
# reduced_res their num_fp16_res; beta1 0, beta2 0.99, lazy R1 every 16 steps, path length
# every 4 (weight 2), style mixing 0.9.
_STYLEGAN2 = {"arch": "stylegan2", "loss": "bce", "z_dim": 512, "w_dim": 512, "g_width": 512,
              "d_width": 512, "beta1": 0.0, "beta2": 0.99, "r1_every": 16, "pl_weight": 2.0,
              "pl_every": 4, "pl_batch_shrink": 2, "style_mixing": 0.9, "reduced_res": 4,
              "conv_clamp": 256.0, "spectral_norm": "off", "d_arch": "resnet", "augment": ""}
AUTO = "stylegan2-auto"


def _spec(resolution: int, batch: int, mbstd: int, fmaps: float, lr: float, gamma: float,
          ema_kimg: float, ramp: float, mapping: int) -> dict[str, Any]:
    """One of NVlabs' --cfg specs (train.py's cfg_specs) as ganctl settings."""
    return {**_STYLEGAN2, "resolution": resolution, "batch_size": batch, "mbstd_group": mbstd,
            "channel_base": int(fmaps * 32768), "lr_g": lr, "lr_d": lr, "r1": gamma,
            "ema_kimg": ema_kimg, "ema_rampup": ramp, "mapping_layers": mapping}


PRESETS.update({
    "stylegan2-256": Preset(
        "StyleGAN2 at 256x256 (NVlabs' paper256): batch 64, half the feature maps, lr 0.0025, "
        "R1 gamma 1, mapping 8 layers, EMA half-life 20k images",
        _spec(256, batch=64, mbstd=8, fmaps=0.5, lr=0.0025, gamma=1.0, ema_kimg=20.0, ramp=0.0,
              mapping=8)),
    "stylegan2-1024": Preset(
        "StyleGAN2 at 1024x1024 (NVlabs' paper1024): batch 32, full feature maps, lr 0.002, "
        "R1 gamma 2, mapping 8 layers, EMA half-life 10k images",
        _spec(1024, batch=32, mbstd=4, fmaps=1.0, lr=0.002, gamma=2.0, ema_kimg=10.0, ramp=0.0,
              mapping=8)),
    "stylegan2-cifar10": Preset(
        "StyleGAN2 on CIFAR-10 (NVlabs' cifar): mapping 2 layers, R1 gamma 0.01, no path-length "
        "regularisation or style mixing, a plain (orig) D, EMA half-life 500k images",
        {**_spec(32, batch=64, mbstd=32, fmaps=1.0, lr=0.0025, gamma=0.01, ema_kimg=500.0,
                 ramp=0.05, mapping=2), **_CIFAR,
         "pl_weight": 0.0, "style_mixing": 0.0, "d_arch": "orig"}),
    AUTO: Preset(
        "StyleGAN2 with NVlabs' auto config: batch, feature maps, lr, R1 gamma (0.0002 res^2 / "
        "batch) and EMA derived from the resolution and the number of GPUs (also what --arch "
        "stylegan2 without a preset trains)",
        {"arch": "stylegan2"}),
})


def stylegan2_auto(resolution: int, gpus: int = 1) -> dict[str, Any]:
    """NVlabs' --cfg=auto for `resolution` on `gpus` GPUs (their train.py): the batch grows
    with the GPUs up to 64 and shrinks with the resolution, mbstd groups of up to 4, full
    feature maps from 512 px, lr 0.002 from 1024 px, R1 gamma 0.0002 res^2 / batch, EMA
    half-life batch * 10 / 32 thousand images with ramp-up 0.05, a mapping of 2 layers."""
    batch = max(min(gpus * min(4096 // resolution, 32), 64), gpus)
    spec = _spec(resolution, batch=batch, mbstd=min(batch // gpus, 4),
                 fmaps=1.0 if resolution >= 512 else 0.5,
                 lr=0.002 if resolution >= 1024 else 0.0025, gamma=0.0002 * resolution**2 / batch,
                 ema_kimg=batch * 10 / 32, ramp=0.05, mapping=2)
    del spec["resolution"]  # the run's own (its data's or its flag's)
    return spec


# what a projected D brings of its own, as Projected GAN trains one: the hinge loss, DiffAugment's
# colour, translation and cutout on everything D sees, spectral norm on its trained layers, no
# R1, R2 or path-length regularisation, and its own width (Projected GAN's 64) whatever G's
PROJECTED_DEFAULTS = {"loss": "hinge", "augment": "diffaug", "spectral_norm": "auto", "r1": 0.0, "r2": 0.0,
                      "pl_weight": 0.0, "d_width": 64}


def arch_defaults(values: dict[str, Any], gpus: int = 1) -> list[tuple[str, dict[str, Any]]]:
    """The settings an architecture brings of its own (below a named preset, a file and the
    flags), as named layers, lowest first: stylegan2's auto config for the run's resolution,
    then a projected D's (--discriminator projected), its backbone's size resolved."""
    layers = []
    resolution = int(values.get("resolution") or 0)
    if values.get("arch") == "stylegan2" and resolution >= 4:  # else its check names the resolution
        layers.append((f"{AUTO} ({resolution} px, {gpus} GPU{'s' if gpus > 1 else ''})",
                       stylegan2_auto(resolution, gpus)))
    if values.get("discriminator") == PROJECTED:
        size = {"backbone_resolution": backbone_size(resolution)} if resolution >= 1 else {}
        layers.append(("projected D", {**PROJECTED_DEFAULTS, **size}))
    return layers


def get(name: str) -> Preset:
    return lookup(PRESETS, name, "preset")

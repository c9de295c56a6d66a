"""Loss registry: --loss name -> Loss class. A new objective is one file implementing
losses.base.Loss (d_loss, g_loss) plus one line here; R1/R2 and lazy regularisation, DiffAugment
and the phases come with the base class."""

from __future__ import annotations

from ganctl.config import Config
from ganctl.errors import lookup
from ganctl.losses.base import NETWORKS, Loss, Phase, Stats, StepInputs, requires_grad
from ganctl.losses.bce import BCE
from ganctl.losses.hinge import Hinge
from ganctl.losses.lsgan import LSGAN
from ganctl.losses.rpgan import RpGAN
from ganctl.losses.wgan_gp import WGANGP

__all__ = ["LOSSES", "NETWORKS", "Loss", "Phase", "Stats", "StepInputs", "get_loss", "make_loss",
           "requires_grad"]

LOSSES: dict[str, type[Loss]] = {"bce": BCE, "hinge": Hinge, "wgan-gp": WGANGP, "lsgan": LSGAN,
                                 "rpgan": RpGAN}


def get_loss(name: str) -> type[Loss]:
    return lookup(LOSSES, name, "loss")


def make_loss(config: Config) -> Loss:
    return get_loss(config.loss)(config)

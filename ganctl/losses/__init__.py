"""Loss registry: --loss name -> Loss class. A new objective is one file implementing
losses.base.Loss plus one line here."""

from __future__ import annotations

from ganctl.config import Config
from ganctl.errors import lookup
from ganctl.losses.base import NETWORKS, Loss, Phase, Stats, StepInputs, requires_grad
from ganctl.losses.bce import BCE

__all__ = ["LOSSES", "NETWORKS", "Loss", "Phase", "Stats", "StepInputs", "get_loss", "make_loss",
           "requires_grad"]

LOSSES: dict[str, type[Loss]] = {"bce": BCE}


def get_loss(name: str) -> type[Loss]:
    return lookup(LOSSES, name, "loss")


def make_loss(config: Config) -> Loss:
    return get_loss(config.loss)(config)

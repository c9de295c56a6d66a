"""GAN objectives as pure functions of D's logits.

With D(x) = sigmoid(logit), -log D(x) = softplus(-logit) and -log(1 - D(x)) = softplus(logit);
computing from logits keeps the losses finite where D saturates.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ganctl.errors import lookup


def bce_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    # L_D = -log D(x) - log(1 - D(G(z)))
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def bce_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    # non-saturating: L_G = -log D(G(z))
    return F.softplus(-fake_logits).mean()


DLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GLoss = Callable[[torch.Tensor], torch.Tensor]

LOSSES: dict[str, tuple[DLoss, GLoss]] = {"bce": (bce_d_loss, bce_g_loss)}


def get_losses(name: str) -> tuple[DLoss, GLoss]:
    return lookup(LOSSES, name, "loss")

"""The article's objective: binary cross-entropy for D, the non-saturating loss for G.

With D(x) = sigmoid(logit), -log D(x) = softplus(-logit) and -log(1 - D(x)) = softplus(logit);
computing from logits keeps the losses finite where D saturates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ganctl.losses.base import Loss, Phase, Stats, StepInputs


def bce_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    # L_D = -log D(x) - log(1 - D(G(z)))
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def bce_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    # non-saturating: L_G = -log D(G(z))
    return F.softplus(-fake_logits).mean()


class BCE(Loss):
    def accumulate(self, phase: Phase, inputs: StepInputs) -> Stats:
        D, c = inputs.D, inputs.c
        if phase.name == "D":
            fake = inputs.fake().detach()  # D's update must not reach G
            real_logits, fake_logits = D(inputs.real.x, c), D(fake, c)
            loss_D = bce_d_loss(real_logits, fake_logits)
            inputs.backward(loss_D)
            return {"loss_D": loss_D.detach(), "D_real": torch.sigmoid(real_logits).mean().detach(),
                    "D_fake": torch.sigmoid(fake_logits).mean().detach()}
        if phase.name == "G":
            loss_G = bce_g_loss(D(inputs.fake(), c))
            inputs.backward(loss_G)
            return {"loss_G": loss_G.detach()}
        raise ValueError(f"BCE has no phase {phase.name!r}")

"""The article's objective: binary cross-entropy for D, the non-saturating loss for G.

With D(x) = sigmoid(logit), -log D(x) = softplus(-logit) and -log(1 - D(x)) = softplus(logit);
computing from logits keeps the losses finite where D saturates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ganctl.losses.base import Loss, Stats


def bce_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    # L_D = -log D(x) - log(1 - D(G(z)))
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def bce_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    # non-saturating: L_G = -log D(G(z))
    return F.softplus(-fake_logits).mean()


class BCE(Loss):
    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return bce_d_loss(real_logits, fake_logits)

    def g_loss(self, fake_logits: torch.Tensor, real_logits: torch.Tensor | None) -> torch.Tensor:
        return bce_g_loss(fake_logits)

    def d_stats(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> Stats:
        """D(x) and D(G(z)) as probabilities."""
        return {"D_real": torch.sigmoid(real_logits).mean().detach(),
                "D_fake": torch.sigmoid(fake_logits).mean().detach()}

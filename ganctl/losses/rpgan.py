"""The relativistic pairing loss of RpGAN, as R3GAN uses it (Huang et al. 2025): each fake is
judged against a real of the batch, f = softplus,
L_D = E[f(D(G(z)) - D(x))],  L_G = E[f(D(x) - D(G(z)))].
R3GAN pairs it with the R1 and R2 penalties (--r1, --r2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ganctl.losses.base import Loss


class RpGAN(Loss):
    uses_real_in_g = True

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.softplus(fake_logits - real_logits).mean()

    def g_loss(self, fake_logits: torch.Tensor, real_logits: torch.Tensor | None) -> torch.Tensor:
        assert real_logits is not None
        return F.softplus(real_logits - fake_logits).mean()

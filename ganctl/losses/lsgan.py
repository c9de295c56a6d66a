"""Least squares GAN (Mao et al. 2017), targets a = 0 (fake), b = c = 1 (real):
L_D = E[(D(x) - 1)^2] / 2 + E[D(G(z))^2] / 2,  L_G = E[(D(G(z)) - 1)^2] / 2."""

from __future__ import annotations

import torch

from ganctl.losses.base import Loss


class LSGAN(Loss):
    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return ((real_logits - 1).square().mean() + fake_logits.square().mean()) / 2

    def g_loss(self, fake_logits: torch.Tensor, real_logits: torch.Tensor | None) -> torch.Tensor:
        return (fake_logits - 1).square().mean() / 2

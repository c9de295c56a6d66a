"""The hinge loss of SNGAN and BigGAN (Lim & Ye 2017; Miyato et al. 2018):
L_D = E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))],  L_G = -E[D(G(z))]."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ganctl.losses.base import Loss


class Hinge(Loss):
    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()

    def g_loss(self, fake_logits: torch.Tensor, real_logits: torch.Tensor | None) -> torch.Tensor:
        return -fake_logits.mean()

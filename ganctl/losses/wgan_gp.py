"""WGAN with gradient penalty (Gulrajani et al. 2017):
L_D = E[D(G(z))] - E[D(x)] + lambda E[(||grad D(x_hat)||_2 - 1)^2], x_hat = e x + (1 - e) G(z),
e ~ U(0, 1) per image;  L_G = -E[D(G(z))]. lambda is --gp (10). The penalty is per image, so
D must not mix the images of a batch: no BatchNorm (dcgan's D drops it under this loss)."""

from __future__ import annotations

import torch

from ganctl.losses.base import Loss, Stats, StepInputs


class WGANGP(Loss):
    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return fake_logits.mean() - real_logits.mean()

    def g_loss(self, fake_logits: torch.Tensor, real_logits: torch.Tensor | None) -> torch.Tensor:
        return -fake_logits.mean()

    def d_penalty(self, inputs: StepInputs, fake: torch.Tensor) -> tuple[torch.Tensor | None, Stats]:
        real = inputs.real.x
        e = torch.rand(real.shape[0], 1, 1, 1, device=real.device, generator=inputs.generator)
        x_hat = (e * real + (1 - e) * fake.float()).detach().requires_grad_(True)
        gradient = inputs.input_grad(x_hat)  # (B, C, H, W)
        penalty = (gradient.flatten(1).norm(dim=1) - 1).square().mean()
        return self.config.gp * penalty, {"loss_GP": penalty.detach()}

"""Pieces the architectures share: class-conditional BatchNorm, the projection discriminator's
head, and spectral normalisation of a whole network."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose scale and shift are looked up by class (de Vries et al. 2017; Miyato &
    Koyama 2018): gamma(c) starts at 1 and beta(c) at 0."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gamma = nn.Embedding(num_classes, channels)
        self.beta = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gamma(c)[:, :, None, None] + self.beta(c)[:, :, None, None]


def batch_norm(channels: int, num_classes: int) -> nn.Module:
    """Plain BatchNorm, or the class-conditional one for a conditional network."""
    return ConditionalBatchNorm2d(channels, num_classes) if num_classes else nn.BatchNorm2d(channels)


class ConditionalSequential(nn.Sequential):
    """A Sequential that hands the class to the layers that take one (same state-dict keys as a
    plain Sequential, so unconditional networks keep theirs)."""

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            x = layer(x, c) if isinstance(layer, ConditionalBatchNorm2d) else layer(x)
        return x


class Projection(nn.Module):
    """The projection discriminator's head (Miyato & Koyama 2018): a linear score of the
    features h plus, for a conditional D, <embed(c), h>."""

    def __init__(self, features: int, num_classes: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 1, bias=bias)
        self.embed = nn.Embedding(num_classes, features) if num_classes else None

    def forward(self, h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return project(self.linear, self.embed, h, c)


def project(linear: nn.Linear, embed: nn.Embedding | None, h: torch.Tensor,
            c: torch.Tensor | None) -> torch.Tensor:
    """linear(h) + <embed(c), h> (the latter for a conditional D): (B, F) features -> (B,) logits.
    For a D whose layers carry their own names (dcgan's `fc` and `embed`, kept so that its
    checkpoints load)."""
    logits = linear(h).squeeze(1)  # (B,)
    if embed is not None:
        if c is None:
            raise ValueError("a conditional discriminator needs the class labels")
        logits = logits + (embed(c) * h).sum(dim=1)
    return logits


class SpectralNorm(parametrizations._SpectralNorm):
    """torch's spectral-norm parametrization (the same buffers, so the same state-dict keys),
    with the power iteration moved out of the forward pass into power_iteration(), which the
    step runs once after each update of the network's weights (and the 15 iterations of the
    start). torch's own iterates in every forward, updating the buffers in place; a compiled D
    saves those buffers for its backward, so a second forward before the backward (D(real),
    then D(fake)) fails with "modified by an inplace operation". Here a forward only reads them.
    """

    def __init__(self, weight: torch.Tensor, n_power_iterations: int = 1, dim: int = 0,
                 eps: float = 1e-12) -> None:
        if not weight.is_meta:
            super().__init__(weight, n_power_iterations, dim, eps)
            return
        # On the meta device (a checkpoint's structure checked: no values) the same buffers,
        # empty: torch's start draws them at random and iterates, and those meta kernels import
        # torch's compiler stack
        nn.Module.__init__(self)
        self.dim, self.eps, self.n_power_iterations = dim % weight.ndim, eps, n_power_iterations
        if weight.ndim > 1:
            h, w = self._reshape_weight_to_matrix(weight).shape
            self.register_buffer("_u", weight.new_empty(h))
            self.register_buffer("_v", weight.new_empty(w))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=self.eps)
        weight_mat = self._reshape_weight_to_matrix(weight)  # (out, in * k * k)
        sigma = torch.vdot(self._u, torch.mv(weight_mat, self._v))  # largest singular value
        return weight / sigma

    @torch.no_grad()
    def power_iteration(self, weight: torch.Tensor) -> None:
        if weight.ndim > 1:
            self._power_method(self._reshape_weight_to_matrix(weight), self.n_power_iterations)


Normed = list[tuple[SpectralNorm, torch.Tensor]]  # each parametrization and its weight


def spectral_norms(net: nn.Module) -> Normed:
    """The spectrally normalised weights of `net`, found once (the step refreshes them often)."""
    found: Normed = []
    for module in net.modules():
        if parametrize.is_parametrized(module, "weight"):
            weight: Any = module.parametrizations["weight"]  # type: ignore[index]
            found += [(p, weight.original) for p in weight if isinstance(p, SpectralNorm)]
    return found


def power_iterations(normed: Normed) -> None:
    """One power iteration for each: the estimates of the largest singular values follow the
    weights as they change."""
    for param, weight in normed:
        param.power_iteration(weight)


def spectral_norm_all(net: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) of every weighted layer of `net`, as torch's
    parametrizations.spectral_norm registers it (same state-dict keys): each weight divided by
    its largest singular value, estimated by power iteration (SpectralNorm: one after each update
    of the weights)."""
    for module in list(net.modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
            weight = module.weight
            # on the meta device, without torch's check of one forward: its meta kernels would
            # import torch's compiler stack (seconds of every sample, resume or inspect)
            parametrize.register_parametrization(module, "weight", SpectralNorm(weight),
                                                 unsafe=weight.is_meta)
    return net

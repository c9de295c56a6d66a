"""The losses and their penalties (ganctl/losses/): values against hand-computed ones, the gradient
penalties against a known gradient, and lazy regularisation's schedule and Adam scaling."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import LinearD, small, state_of
from torch import nn

from ganctl.config import Config
from ganctl.data import Batch
from ganctl.engine.step import train_step
from ganctl.losses import LOSSES, Phase, StepInputs, make_loss

REAL = torch.tensor([2.0, -0.5, 0.3])
FAKE = torch.tensor([-1.0, 0.8, 1.5])


def loss_of(name):
    return LOSSES[name](Config(loss=name))


def test_losses_against_hand_computed_values():
    relu, sp = lambda t: max(t, 0.0), lambda t: math.log1p(math.exp(t))  # noqa: E731
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    r, f = REAL.tolist(), FAKE.tolist()
    expected = {
        "hinge": (mean([relu(1 - x) for x in r]) + mean([relu(1 + x) for x in f]), -mean(f)),
        "lsgan": ((mean([(x - 1) ** 2 for x in r]) + mean([x ** 2 for x in f])) / 2,
                  mean([(x - 1) ** 2 for x in f]) / 2),
        "wgan-gp": (mean(f) - mean(r), -mean(f)),
        "rpgan": (mean([sp(b - a) for a, b in zip(r, f, strict=True)]),
                  mean([sp(a - b) for a, b in zip(r, f, strict=True)])),
        "bce": (mean([sp(-x) for x in r]) + mean([sp(x) for x in f]), mean([sp(-x) for x in f])),
    }
    for name, (d, g) in expected.items():
        loss = loss_of(name)
        assert loss.d_loss(REAL, FAKE).item() == pytest.approx(d, rel=1e-6), name
        assert loss.g_loss(FAKE, REAL).item() == pytest.approx(g, rel=1e-6), name


class FixedG(nn.Module):
    def __init__(self, fakes):
        super().__init__()
        self.fakes = fakes
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, z, c=None):
        return self.fakes + self.dummy


def inputs_for(w, real, fake):
    return StepInputs(FixedG(fake), LinearD(w), Batch(real), torch.zeros(len(real), 1),
                      generator=torch.Generator().manual_seed(0))


def test_the_gradient_penalties_against_a_known_gradient():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(12, generator=g) / 2  # a D with |grad| = |w| everywhere
    real, fake = torch.randn(5, 3, 2, 2, generator=g), torch.randn(5, 3, 2, 2, generator=g)
    gp_loss = LOSSES["wgan-gp"](Config(loss="wgan-gp", gp=10.0))
    penalty, stats = gp_loss.d_penalty(inputs_for(w, real, fake), fake)
    assert stats["loss_GP"].item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)
    assert penalty.item() == pytest.approx(10 * (w.norm().item() - 1) ** 2, rel=1e-5)
    # R1 and R2, lazy every 4 steps: gamma / 2 |w|^2 each, backpropagated with weight x 4
    loss = make_loss(Config(r1=2.0, r2=0.5, r1_every=4))
    inputs = inputs_for(w, real, fake)
    stats = loss.reg_phase(Phase("Dreg", "D", interval=4), inputs)
    assert stats["loss_R1"].item() == pytest.approx(2.0 / 2 * w.square().sum().item(), rel=1e-5)
    assert stats["loss_R2"].item() == pytest.approx(0.5 / 2 * w.square().sum().item(), rel=1e-5)
    # d/dw of 4 (gamma1 + gamma2) / 2 |w|^2 = 4 (gamma1 + gamma2) w
    torch.testing.assert_close(inputs.D.w.grad, 4 * (2.0 + 0.5) * w, rtol=1e-5, atol=1e-6)


def test_lazy_regularisation_runs_every_n_steps_and_scales_adam():
    config = small("dcgan", "hinge", False, )
    config = config.replace(r1_every=3, augment="")
    state = state_of(config)
    assert [p.name for p in state.loss.phases()] == ["D", "Dreg", "G"]
    ran = [n for n in range(1, 8) if "loss_R1" in train_step(state, state.loss.phases())]
    assert ran == [3, 6]
    ratio = 3 / 4  # lazy / (lazy + 1): D takes 4 updates every 3 steps
    group = state.opt_D.param_groups[0]
    assert group["lr"] == pytest.approx(config.lr_d * ratio)
    assert group["betas"] == pytest.approx((config.beta1 ** ratio, config.beta2 ** ratio))
    assert state.opt_G.param_groups[0]["lr"] == config.lr_g
    # the ratio counts D's ordinary updates between two regulariser updates: d_steps x r1_every,
    # and a regulariser every step is a separate update too (1 / 2)
    for d_steps, every, m in ((2, 3, 6), (1, 1, 1), (3, 1, 3)):
        opt = state_of(config.replace(d_steps=d_steps, r1_every=every)).opt_D.param_groups[0]
        assert opt["lr"] == pytest.approx(config.lr_d * m / (m + 1))
    assert state_of(config.replace(r1=0.0, r2=0.0)).opt_D.param_groups[0]["lr"] == config.lr_d

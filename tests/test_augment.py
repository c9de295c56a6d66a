"""Augmentations (ganctl/augment/): DiffAugment's policies, and a toy adaptive
augmentation, built through the public interface, that trains, checkpoints its state and resumes
exactly."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY, ToyAdaptive, assert_same_tensors, final_tensors, invoke, seen

from ganctl import augment
from ganctl.augment import diffaug
from ganctl.augment.diffaug import DiffAugment
from ganctl.config import Config
from ganctl.errors import ConfigError
from ganctl.models import build_models


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(augment.KINDS, "toy", lambda options: ToyAdaptive())
    seen.clear()
    return seen


def test_a_toy_adaptive_augmentation_learns_from_d_and_resumes_exactly(workdir, toy):
    args = [*TINY, "--augment", "toy", "--ckpt-every", "3", "--log-every", "1"]
    assert invoke("train", *args, "--steps", "6", "--out", "straight").exit_code == 0
    # fed back at steps 2, 4 and 6, each the sums over its two steps' reals (batch 8)
    assert [d["count"] for d in toy] == [16.0, 16.0, 16.0]
    assert all(abs(d["signs"]) <= 16 for d in toy)
    step, straight = final_tensors(workdir / "straight")
    assert step == 6
    p = float(straight["loss.augment.p"])
    assert min(abs(p - v) for v in (0.35, 0.45, 0.55, 0.65)) < 1e-6  # 3 moves of 0.05
    assert {k for k in straight if k.startswith("loss.")} == {
        "loss.augment.p", "loss.augment.fb_signs", "loss.augment.fb_count"}
    # stopped at step 3, between feedbacks: the pending sums are checkpointed and resumed
    assert invoke("train", *args, "--steps", "3", "--out", "r").exit_code == 0
    _, at3 = final_tensors(workdir / "r")
    assert float(at3["loss.augment.fb_count"]) == 8.0
    assert invoke("resume", "r", "--steps", "6").exit_code == 0
    _, resumed = final_tensors(workdir / "r")
    assert_same_tensors(straight, resumed)


def test_feedback_is_summed_by_the_engine_then_starts_again():
    toy = ToyAdaptive()
    toy.observe(torch.tensor([1.0, 2.0, -1.0]))
    toy.observe(torch.tensor([3.0]))
    assert float(toy.fb_signs) == 2.0 and float(toy.fb_count) == 4.0
    delivered = []

    def two_processes(tensors: list[torch.Tensor]) -> None:  # as sum_over_ranks with a twin
        delivered.append(len(tensors))
        for t in tensors:
            t.mul_(2)

    seen.clear()
    toy.deliver(two_processes)
    assert delivered == [2] and seen == [{"signs": 4.0, "count": 8.0}]
    assert float(toy.p) == pytest.approx(0.45)  # mean sign 0.5 < TARGET: augment less
    assert float(toy.fb_signs) == float(toy.fb_count) == 0.0


def test_diffaugment_is_an_augmentation_without_state():
    made = augment.make("diffaug:color,cutout")
    assert isinstance(made, DiffAugment) and made.policies == ["color", "cutout"]
    assert made.state_dict() == {} and made.interval == 0
    assert augment.make("none") is None


def test_a_diffaug_run_writes_no_augmentation_state(workdir):
    assert invoke("train", *TINY, "--augment", "diffaug", "--out", "r").exit_code == 0
    _, tensors = final_tensors(workdir / "r")
    assert not any(k.startswith("loss.") for k in tensors)


# --- DiffAugment's policies -----------------------------------------------------------------------

def test_diffaugment_is_differentiable_and_keeps_the_shape():
    torch.manual_seed(0)
    G, _ = build_models(Config(g_width=4, d_width=4, z_dim=8))
    x = G(torch.randn(6, 8))
    policy = augment.make("diffaug")
    y = policy(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(x, y)
    y.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
    assert diffaug.parse("diffaug:color") == ["color"] and augment.make("") is None
    with pytest.raises(Exception, match="unknown policy 'flip'"):
        diffaug.parse("diffaug:flip")
    assert diffaug.parse("none") == diffaug.parse("off") == diffaug.parse("") == []
    assert diffaug.parse("diffaug") == list(diffaug.POLICIES)
    for spec, message in (("diffaug:", "an empty policy"), ("diffaug:,", "an empty policy"),
                          ("diffaug:color,,cutout", "an empty policy"),
                          ("diffaug:cutout,cutout", "names a policy twice"),
                          ("flip", "the augmentation is diffaug")):
        with pytest.raises(ConfigError, match=message):
            diffaug.parse(spec)

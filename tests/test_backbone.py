"""A discriminator on a frozen pretrained network (ganctl/models/backbone.py): a toy one, built
through the registries, is never re-initialised, normalised, optimised or checkpointed, records
its file's sha256, resumes exactly, and refuses another file on resume."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY, assert_one_line_error, assert_same_tensors, final_tensors, invoke
from safetensors.torch import load_file, save_file
from torch import nn

from ganctl import checkpoint, rundir
from ganctl.models import ARCHS
from ganctl.models.backbone import BACKBONES, Backbone, WithFrozen, attached, weights_digest
from ganctl.models.mlp import MLP
from ganctl.weights import WeightsFile

TOY = WeightsFile(what="the toy backbone", file_name="toynet.safetensors",
                  url="https://example.invalid/toynet.safetensors", flag="--backbone-weights",
                  env="GANCTL_BACKBONE_TOYNET", noun="the toy backbone's file")


def toynet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())


class ToyProjectedD(WithFrozen):
    """A trainable head on the frozen toy network's features."""

    def __init__(self, resolution: int, channels: int, width: int, classes: int = 0) -> None:
        super().__init__()
        self.attach("toynet", toynet())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * resolution * resolution, 1))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.frozen("toynet")(x)).squeeze(1)


class ToyProjected(MLP):
    name = "toyproj"
    discriminator = ToyProjectedD


def _weights_file(path, seed: int):
    torch.manual_seed(seed)
    net = toynet()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)  # statistics a frozen BatchNorm must keep
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return net.state_dict()


@pytest.fixture
def toyproj(monkeypatch, workdir):
    monkeypatch.setitem(ARCHS, "toyproj", ToyProjected())
    monkeypatch.setitem(BACKBONES, "toynet", Backbone("toynet", TOY, toynet))
    weights = _weights_file(workdir / "toynet.safetensors", seed=1)
    monkeypatch.setenv("GANCTL_BACKBONE_TOYNET", str(workdir / "toynet.safetensors"))
    return weights


ARGS = [*TINY, "--arch", "toyproj", "--resolution", "16", "--spectral-norm",
        "--ckpt-every", "3"]


def test_a_frozen_backbone_is_loaded_never_trained_and_only_named_in_checkpoints(workdir, toyproj):
    assert invoke("train", *ARGS, "--steps", "6", "--out", "straight").exit_code == 0
    _, straight = final_tensors(workdir / "straight")
    d_names = {k for k in straight if k.startswith("D.")}
    assert d_names and all(k.startswith("D.head.") for k in d_names)  # the backbone is not in it
    assert any("parametrizations" in k for k in d_names)  # the head is spectrally normalised
    latest = checkpoint.open_checkpoint(rundir.latest_in_run(workdir / "straight"))
    assert json.loads(latest.metadata["ganctl.backbones"]) == {
        "toynet": weights_digest(load_file(workdir / "toynet.safetensors"))}
    # resumed from step 3: the same tensors as the straight run
    assert invoke("train", *ARGS, "--steps", "3", "--out", "r").exit_code == 0
    assert invoke("resume", "r", "--steps", "6").exit_code == 0
    _, resumed = final_tensors(workdir / "r")
    assert_same_tensors(straight, resumed)


def test_the_backbone_keeps_its_weights_and_statistics_while_d_trains(toyproj):
    from ganctl.config import Config  # noqa: PLC0415
    from ganctl.engine.state import init_state  # noqa: PLC0415
    from ganctl.engine.step import train_step  # noqa: PLC0415

    config = Config(arch="toyproj", resolution=16, batch_size=4, g_width=8, d_width=8, z_dim=8,
                    device="cpu", spectral_norm="on")
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8).numpy()
    state = init_state(config, torch.device("cpu"), images)
    (frozen,) = attached(state.D).values()
    for _ in range(2):
        train_step(state, state.loss.phases())
    for k, v in frozen.state_dict().items():
        assert torch.equal(v, toyproj[k]), k
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in state.D.parameters())  # the head trains
    optimised = {id(p) for group in state.opt_D.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in state.D.parameters()}  # the head alone
    assert not optimised & {id(p) for p in frozen.parameters()}


def test_resume_refuses_a_backbone_file_with_another_digest(workdir, toyproj, monkeypatch):
    assert invoke("train", *ARGS, "--steps", "3", "--out", "r").exit_code == 0
    _weights_file(workdir / "other.safetensors", seed=2)
    before = sorted(p.name for p in (workdir / "r").rglob("*"))
    result = invoke("resume", "r", "--steps", "6", "--backbone-weights", "other.safetensors")
    assert_one_line_error(result, 1, "was trained on backbone 'toynet' with sha256",
                          "give the file it was trained with (--backbone-weights)")
    assert sorted(p.name for p in (workdir / "r").rglob("*")) == before
    # the file it was trained with, by the flag: resumes
    monkeypatch.delenv("GANCTL_BACKBONE_TOYNET")
    result = invoke("resume", "r", "--steps", "4", "--backbone-weights", "toynet.safetensors")
    assert result.exit_code == 0, result.output


def test_a_missing_or_wrong_backbone_file_is_one_line(workdir, toyproj, monkeypatch):
    result = invoke("train", *ARGS, "--steps", "2", "--backbone-weights", "nope.safetensors",
                    "--out", "r")
    # the path as stored: absolute (resume finds it from anywhere)
    assert_one_line_error(result, 1, f"--backbone-weights {workdir / 'nope.safetensors'} does not exist")
    save_file({"x": torch.zeros(2)}, str(workdir / "bad.safetensors"))
    result = invoke("train", *ARGS, "--steps", "2", "--backbone-weights", "bad.safetensors",
                    "--out", "r")
    assert_one_line_error(result, 1, "does not hold the weights of backbone 'toynet'")
    assert not (workdir / "r").exists()


@pytest.mark.parametrize("flag, value, note", [
    ("--backbone-weights", "any.safetensors", "--backbone-weights is the file of a frozen network "
     "a D stands on; dcgan's D stands on none, so it does nothing"),
    ("--backbone-resolution", "64", "--backbone-resolution sizes the images a projected D's "
     "backbone sees; without --discriminator projected it does nothing"),
])
def test_backbone_settings_on_a_d_without_a_backbone_are_pointed_out(workdir, flag, value, note):
    result = invoke("train", *TINY, flag, value, "--out", "r")
    assert result.exit_code == 0, result.output
    assert note in result.stdout


def test_backbone_weights_on_an_arch_with_one_is_not_pointed_out(workdir, toyproj):
    result = invoke("train", *ARGS, "--steps", "2", "--backbone-weights", "toynet.safetensors",
                    "--out", "r")
    assert result.exit_code == 0, result.output
    assert "--backbone-weights is the file" not in result.stdout

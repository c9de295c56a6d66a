"""Generators with a mapping network (ganctl/models/generator.py): a toy one, built through the
architecture registry, trains, follows w_avg, resumes exactly, and samples, exports in bulk and
interpolates with truncation toward w_avg; run_G mixes styles."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY, assert_same_tensors, final_tensors, invoke
from torch import nn

import ganctl
from ganctl import checkpoint, rundir
from ganctl.config import Config
from ganctl.models import ARCHS
from ganctl.models.generator import forward_mapped, has_mapping, images, run_G
from ganctl.models.mlp import MLP
from ganctl.sample import latents_from_seeds, load_generator, to_uint8

W_DIM, NUM_WS = 16, 3


class ToyMappedG(nn.Module):
    """z -> w (the same style for each of NUM_WS layers) -> a small MLP synthesis."""

    def __init__(self, z_dim: int, resolution: int, channels: int, width: int, classes: int = 0):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws = z_dim, W_DIM, NUM_WS
        self.shape = (channels, resolution, resolution)
        self.map = nn.Sequential(nn.Linear(z_dim, W_DIM), nn.LeakyReLU(0.2), nn.Linear(W_DIM, W_DIM))
        self.embed = nn.Embedding(classes, z_dim) if classes else None
        self.layers = nn.ModuleList(nn.Linear(W_DIM, W_DIM) for _ in range(NUM_WS - 1))
        self.out = nn.Linear(W_DIM, channels * resolution * resolution)
        self.register_buffer("w_avg", torch.zeros(W_DIM))

    def mapping(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None and c is not None:
            z = z + self.embed(c)
        return self.map(z)[:, None].repeat(1, self.num_ws, 1)  # (B, num_ws, w_dim)

    def synthesis(self, w: torch.Tensor) -> torch.Tensor:
        h = w[:, 0]
        for i, layer in enumerate(self.layers):
            h = torch.relu(layer(h)) + w[:, i + 1]
        return torch.tanh(self.out(h)).view(-1, *self.shape)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, mix_z=None, cut=None,
                noise=None) -> torch.Tensor:
        return forward_mapped(self, z, c, mix_z, cut, noise)


class ToyMapped(MLP):
    name = "toymap"
    generator = ToyMappedG


@pytest.fixture
def toymap(monkeypatch):
    monkeypatch.setitem(ARCHS, "toymap", ToyMapped())


ARGS = [*TINY, "--arch", "toymap", "--resolution", "16", "--ckpt-every", "3"]


def test_a_toy_mapped_generator_trains_follows_w_avg_and_resumes_exactly(workdir, toymap):
    assert invoke("train", *ARGS, "--steps", "6", "--out", "straight").exit_code == 0
    _, straight = final_tensors(workdir / "straight")
    assert straight["G.w_avg"].abs().sum() > 0 and straight["G_ema.w_avg"].abs().sum() > 0
    assert invoke("train", *ARGS, "--steps", "3", "--out", "r").exit_code == 0
    assert invoke("resume", "r", "--steps", "6").exit_code == 0
    _, resumed = final_tensors(workdir / "r")
    assert_same_tensors(straight, resumed)


def test_truncation_moves_a_mapped_generators_images_toward_w_avg(workdir, toymap):
    assert invoke("train", *ARGS, "--steps", "3", "--out", "r").exit_code == 0
    G = ganctl.load("r", device="cpu")
    free = G.sample(seeds=range(4))
    assert not torch.equal(free[0], free[1])
    at_avg = G.sample(seeds=range(4), truncation=0)  # every seed: synthesis(w_avg)
    assert all(torch.equal(at_avg[0], x) for x in at_avg)
    net = load_generator(checkpoint.open_checkpoint(rundir.latest_in_run(workdir / "r")),
                         torch.device("cpu")).G
    with torch.no_grad():
        expected = net.synthesis(net.w_avg.expand(1, NUM_WS, W_DIM))
        assert torch.equal(at_avg[0], to_uint8(expected)[0])
        half = G.sample(seeds=range(4), truncation=0.5)  # z untruncated, w halfway to w_avg
        w = net.w_avg.lerp(net.mapping(latents_from_seeds(range(4), net.z_dim)), 0.5)
        assert torch.equal(half, to_uint8(net.synthesis(w)))
    # the CLI's grid, a bulk export and an interpolation take the same truncation
    assert invoke("sample", "-n", "4", "g.png", "--ckpt", "r", "--truncation", "0").exit_code == 0
    result = invoke("sample", "-n", "3", "--out-dir", "bulk", "--ckpt", "r", "--truncation", "0")
    assert result.exit_code == 0, result.output
    files = sorted((workdir / "bulk").glob("seed*.png"))
    assert len(files) == 3 and len({f.read_bytes() for f in files}) == 1
    result = invoke("sample", "--interpolate", "--seeds", "0,1", "--frames", "4", "walk.png",
                    "--ckpt", "r", "--truncation", "0")
    assert result.exit_code == 0, result.output


def test_run_g_returns_w_and_mixes_styles_after_a_cut():
    torch.manual_seed(0)
    G = ToyMappedG(8, 16, 1, 8)
    assert has_mapping(G) and not has_mapping(nn.Linear(2, 2))
    z = torch.randn(6, 8)
    x, w = run_G(G.eval(), z, want_ws=True)
    assert torch.equal(run_G(G, z)[0], x) and run_G(G, z)[1] is None  # G's own forward: the same
    assert w is not None and w.shape == (6, NUM_WS, W_DIM)
    assert torch.equal(x, images(G, z)) and torch.equal(G.w_avg, torch.zeros(W_DIM))  # eval: not followed
    g = torch.Generator().manual_seed(1)
    _, mixed = run_G(G, z, mix=1.0, generator=g, want_ws=True)
    assert mixed is not None
    assert torch.equal(mixed[:, 0], w[:, 0])  # the first layer is always z's own
    assert not torch.equal(mixed[:, -1], w[:, -1])  # a later one from the other latent
    G.train()
    run_G(G, z)
    assert G.w_avg.abs().sum() > 0  # training follows the mean of w


def test_a_generator_without_mapping_runs_as_before():
    torch.manual_seed(0)
    G = MLP().build_generator(Config(arch="mlp", resolution=16, z_dim=8, g_width=8))
    z = torch.randn(2, 8)
    x, w = run_G(G, z, want_ws=True)
    assert w is None and torch.equal(x, G(z, None)) and torch.equal(images(G, z, None, 0.5), x)

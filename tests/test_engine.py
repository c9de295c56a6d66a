"""The engine without the CLI: config, losses, models, EMA, data, device."""

import dataclasses
import math

import pytest
import torch

from ganctl.config import Config, load_config_file
from ganctl.data import Batches, load_dataset, shapes
from ganctl.device import resolve_device
from ganctl.errors import ConfigError, DeviceError
from ganctl.losses import bce_d_loss, bce_g_loss
from ganctl.models import build_models
from ganctl.sample import latents_from_seeds, make_grid, to_uint8
from ganctl.train import resolve_config, update_ema


def test_config_is_frozen_and_validated():
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 5
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        Config(steps=0)
    with pytest.raises(ConfigError, match="batch_size must be an integer"):
        Config(batch_size=True)
    with pytest.raises(ConfigError, match="beta1 must be in"):
        Config(beta1=1.0)
    assert Config(ema_decay=0).ema_decay == 0.0 and isinstance(Config(lr_g=1).lr_g, float)
    assert Config.from_dict(json_round_trip(config)) == config


def json_round_trip(config):
    import json
    return json.loads(config.to_json())


def test_resolve_config_layers_preset_under_values():
    config = resolve_config({"steps": 7})
    assert (config.steps, config.resolution, config.g_width) == (7, 32, 32)  # shapes preset
    assert resolve_config({"g_width": 64}).g_width == 64


def test_json_config_file(tmp_path):
    (tmp_path / "c.json").write_text('{"steps": 3, "z-dim": 8}')
    assert load_config_file(tmp_path / "c.json") == {"steps": 3, "z_dim": 8}


def test_losses_have_their_known_values():
    zero = torch.zeros(4)
    # D(x) = D(G(z)) = 1/2: L_D = -log(1/2) - log(1/2) = 2 log 2, L_G = log 2
    assert bce_d_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert bce_g_loss(zero).item() == pytest.approx(math.log(2))
    # against the BCE definition at arbitrary logits
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    expected_d = -(torch.log(torch.sigmoid(real)).mean() + torch.log(1 - torch.sigmoid(fake)).mean())
    assert bce_d_loss(real, fake).item() == pytest.approx(expected_d.item(), rel=1e-6)
    assert bce_g_loss(fake).item() == pytest.approx(-torch.log(torch.sigmoid(fake)).mean().item())
    # saturated D: finite, and the non-saturating G loss still has a gradient
    fake = torch.tensor([-100.0], requires_grad=True)
    loss = bce_g_loss(fake)
    loss.backward()
    assert loss.item() == pytest.approx(100.0) and fake.grad.item() == pytest.approx(-1.0)


@pytest.mark.parametrize("resolution, channels", [(32, 3), (32, 1), (64, 3), (64, 1)])
def test_dcgan_shapes_and_init(resolution, channels):
    torch.manual_seed(0)
    G, D = build_models(Config(resolution=resolution, channels=channels))
    z = torch.randn(5, 100)
    x = G(z)
    assert x.shape == (5, channels, resolution, resolution)
    assert x.min() >= -1 and x.max() <= 1  # tanh output
    assert D(x).shape == (5,)
    conv = [m.weight for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert abs(torch.cat([w.flatten() for w in conv]).std().item() - 0.02) < 0.002


def test_dcgan_64_matches_the_seed_article_sizes():
    G, D = build_models(Config(resolution=64))
    # DCGAN-64 with ngf = ndf = 64: G ~3.58M parameters, D ~2.77M (conv 4x4 + BatchNorm)
    assert sum(p.numel() for p in G.parameters()) == 3_576_704
    assert sum(p.numel() for p in D.parameters()) == 2_765_568


def test_ema_follows_with_warmup():
    G, G_ema = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        G.weight.fill_(1.0)
        G_ema.weight.fill_(0.0)
    update_ema(G_ema, G, step=0, decay=0.999)  # beta = min(0.999, 1/10) = 0.1
    assert torch.allclose(G_ema.weight, torch.full((1, 2), 0.9))
    G_ema.weight.data.fill_(0.0)
    update_ema(G_ema, G, step=10**6, decay=0.999)  # beta = 0.999
    assert torch.allclose(G_ema.weight, torch.full((1, 2), 0.001))


def test_shapes_dataset_is_deterministic_and_varied():
    a, b = shapes.render(32, 3, n=256), shapes.render(32, 3, n=256)
    assert a.dtype == torch.uint8 and a.shape == (256, 3, 32, 32) and torch.equal(a, b)
    assert shapes.render(32, 1, n=8).shape == (8, 1, 32, 32)
    # every image has a bright shape on a darker background
    flat = a.float().amax(1).flatten(1)  # (n, H*W) brightest channel
    assert (flat.amax(1) > 180).all() and (flat.median(1).values < 120).all()
    assert len({tuple(img[:, 16, 16].tolist()) for img in a}) > 100  # not one picture


def test_dataset_registry_loads_at_the_config_size():
    data = load_dataset(Config(resolution=64, channels=1))
    assert data.images.shape == (shapes.SIZE, 1, 64, 64)


def test_batches_are_reproducible_and_resumable():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2)

    def draw(batches, k):  # k batches, as the image indices they hold
        return [[round((v + 1) * 127.5) for v in batches.next()[:, 0, 0, 0].tolist()]
                for _ in range(k)]

    a = Batches(images, 3, seed=1, device=torch.device("cpu"))
    seq = draw(a, 7)
    for epoch in (seq[0:3], seq[3:6]):  # 3 batches of distinct images; the 10th is dropped
        assert len({i for batch in epoch for i in batch}) == 9
    assert seq[0:3] != seq[3:6]  # a new order each epoch
    assert draw(Batches(images, 3, seed=1, device=torch.device("cpu")), 7) == seq
    assert draw(Batches(images, 3, seed=2, device=torch.device("cpu")), 3) != seq[:3]
    b = Batches(images, 3, seed=1, device=torch.device("cpu"))
    draw(b, 4)
    c = Batches(images, 3, seed=1, device=torch.device("cpu"))
    c.load_state(*b.state())
    assert draw(c, 3) == seq[4:7]
    x = Batches(images, 10, seed=0, device=torch.device("cpu")).next()
    assert x.min() == -1.0 and x.max() == pytest.approx(9 / 127.5 - 1)  # uint8 -> [-1, 1]


def test_latents_depend_on_seed_only():
    a = latents_from_seeds([3, 4, 5], 8)
    assert torch.equal(a[2], latents_from_seeds([5], 8)[0])
    assert not torch.equal(a[0], a[1])


def test_grid_layout():
    images = torch.stack([torch.full((3, 2, 2), i, dtype=torch.uint8) for i in range(1, 6)])
    grid = make_grid(images, padding=1)  # 5 images: 3 per row, 2 rows
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1, 3)
    assert grid[1, 1].tolist() == [1, 1, 1] and grid[4, 4].tolist() == [5, 5, 5]
    assert grid[4, 7].tolist() == [0, 0, 0]  # the empty sixth cell
    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0, 2.0])).tolist() == [0, 128, 255, 255]


def test_device_choice_on_this_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_auto_picks_the_gpu_with_most_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    free = {0: 5, 1: 9, 2: 7}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 10))
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:2") == torch.device("cuda", 2)
    with pytest.raises(DeviceError, match="only 3 CUDA GPU"):
        resolve_device("cuda:3")

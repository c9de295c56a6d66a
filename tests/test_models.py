"""Architectures behind the typed registry: shapes, initialisation, sizes, resolution checks."""

import pytest
import torch
from torch import nn

from ganctl.config import Config
from ganctl.errors import ConfigError
from ganctl.models import ARCHS, build_generator, build_models, check_config, get_arch
from ganctl.models.base import Architecture


@pytest.mark.parametrize("resolution, channels", [(32, 3), (32, 1), (64, 3), (64, 1)])
def test_dcgan_shapes_and_init(resolution, channels):
    torch.manual_seed(0)
    G, D = build_models(Config(resolution=resolution, channels=channels, g_width=16, d_width=16))
    z = torch.randn(5, 100)
    x = G(z)
    assert x.shape == (5, channels, resolution, resolution)
    assert x.min() >= -1 and x.max() <= 1  # tanh output
    assert D(x).shape == (5,)
    conv = [m.weight for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert abs(torch.cat([w.flatten() for w in conv]).std().item() - 0.02) < 0.002


def test_dcgan_64_matches_the_seed_article_sizes():
    with torch.device("meta"):
        G, D = build_models(Config(resolution=64))
    # DCGAN-64 with ngf = ndf = 64: G ~3.58M parameters, D ~2.77M (conv 4x4 + BatchNorm)
    assert sum(p.numel() for p in G.parameters()) == 3_576_704
    assert sum(p.numel() for p in D.parameters()) == 2_765_568


def test_networks_take_class_labels_and_unconditional_ones_ignore_them():
    torch.manual_seed(0)
    G, D = build_models(Config(g_width=8, d_width=8))
    G.eval(), D.eval()
    z, c = torch.randn(3, 100), torch.tensor([0, 2, 1])
    assert torch.equal(G(z, c), G(z)) and torch.equal(D(G(z), c), D(G(z)))


def test_every_architecture_implements_the_interface():
    assert ARCHS and all(isinstance(a, Architecture) and a.name == n for n, a in ARCHS.items())
    for arch in ARCHS.values():
        config = Config(arch=arch.name, resolution=arch.resolutions[0], g_width=8, d_width=8)
        arch.check(config)
        G, D = arch.build(config)
        alone = arch.build_generator(config)
        assert isinstance(G, nn.Module) and isinstance(D, nn.Module)
        assert G.state_dict().keys() == alone.state_dict().keys()  # a checkpoint's G_ema loads


def test_resolution_checks_live_with_the_architecture():
    with pytest.raises(ConfigError, match="dcgan does not support resolution 48; use one of 32, 64, 128"):
        check_config(Config(resolution=48))
    with pytest.raises(ConfigError, match="dcgan does not support resolution 16"):
        build_generator(Config(resolution=16))
    with pytest.raises(ConfigError, match="unknown arch 'stylegan9'; choose one of dcgan"):
        get_arch("stylegan9")

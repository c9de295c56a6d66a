"""The model zoo (ganctl/models/): networks' shapes and init, every architecture with every loss
and conditioning training, resuming exactly and sampling, spectral norm, the conditional D and G,
and the checks that belong to a model."""

import itertools
import json

import pytest
import torch
from helpers import CLASSES, TINY, assert_one_line_error, image_folder, invoke, read_json, small, state_of
from torch import nn

from ganctl.config import Config
from ganctl.data import shapes
from ganctl.engine.state import init_state, load_state, snapshot, state_tensors
from ganctl.engine.step import train_step
from ganctl.errors import ConfigError
from ganctl.losses import LOSSES
from ganctl.models import ARCHS, build_generator, build_models, check_config, get_arch
from ganctl.models.base import Architecture
from ganctl.models.layers import ConditionalBatchNorm2d, power_iterations, spectral_norms
from ganctl.sample import generate, labels_for_seeds, latents_from_seeds


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
    with pytest.raises(ConfigError, match=r"unknown arch .stylegan9. .did you mean .stylegan2.\?.; "
                                          "choose one of dcgan"):
        get_arch("stylegan9")


# --- every architecture, loss and conditioning ----------------------------------------------------

@pytest.mark.parametrize("arch, loss, conditional",
                         list(itertools.product(ARCHS, LOSSES, (False, True))))
def test_every_combination_trains_resumes_exactly_and_samples(arch, loss, conditional):
    config = small(arch, loss, conditional)
    straight = state_of(config)
    phases = straight.loss.phases()
    for _ in range(2):
        stats = train_step(straight, phases)
        assert stats and all(torch.isfinite(v) for v in stats.values()), stats
    saved = snapshot(straight)
    for _ in range(2):
        train_step(straight, phases)
    resumed = state_of(config)
    load_state(resumed, {k: v.clone() for k, v in saved.items()})
    for _ in range(2):
        train_step(resumed, resumed.loss.phases())
    a, b = state_tensors(straight), state_tensors(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    seeds = range(5)
    images = generate(resumed.G_ema, latents_from_seeds(seeds, 8), torch.device("cpu"),
                      labels_for_seeds(seeds, config))
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.uint8


def test_the_command_line_trains_a_conditional_resnet_and_samples_it(workdir):
    image_folder(workdir / "imgs", 12, classes=3)
    args = [*TINY, "--dataset", "imgs", "--resolution", "32", "--arch", "resnet", "--loss",
            "hinge", "--conditional", "--r1", "0.5", "--r1-every", "2", "--augment",
            "diffaug:translation,cutout", "--g-width", "4", "--d-width", "4", "--out", "r"]
    assert invoke("train", *args, "--steps", "2").exit_code == 0
    result = invoke("resume", "r", "--steps", "4")
    assert result.exit_code == 0, result.output
    config = read_json(workdir / "r" / "config.json")
    assert (config["arch"], config["loss"], config["conditional"], config["classes"]) == (
        "resnet", "hinge", True, ["c0", "c1", "c2"])
    sampled = invoke("sample", "-n", "6", "s.png", "--ckpt", "r", "--json")
    assert sampled.exit_code == 0 and json.loads(sampled.stdout)["step"] == 4
    assert invoke("inspect", "r", "--json").exit_code == 0


def test_a_conditional_state_needs_its_class_names_and_labels():
    config = small("resnet", "hinge", True)
    images = shapes.render(32, 3, n=64)
    for bad, labels in ((config.replace(classes=()), torch.arange(64) % 3), (config, None)):
        with pytest.raises(ConfigError, match="a conditional model needs the data's class names"):
            init_state(bad, torch.device("cpu"), images, labels)


# --- layers and conditioning ----------------------------------------------------------------------

def test_spectral_norm_bounds_every_layer_of_d_at_one():
    torch.manual_seed(0)
    _, D = build_models(Config(arch="resnet", g_width=4, d_width=8, conditional=True,
                               classes=CLASSES))
    x, c = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    buffers = {k: v.clone() for k, v in D.named_buffers()}
    (D(x, c).sum() + D(-x, c).sum()).backward()  # two forwards, one backward: no in-place change
    assert all(torch.equal(v, buffers[k]) for k, v in D.named_buffers())
    estimates = spectral_norms(D)
    for _ in range(30):  # the step runs one power iteration after each update of D
        power_iterations(estimates)
    normed = [m for m in D.modules() if hasattr(m, "parametrizations")]
    assert len(normed) >= 9  # every conv, the linear and the projection's embedding
    for m in normed:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=1e-2), type(m).__name__
    plain = build_models(Config(arch="resnet", g_width=4, d_width=8, spectral_norm="off"))[1]
    assert not any(hasattr(m, "parametrizations") for m in plain.modules())


@pytest.mark.parametrize("arch", ["dcgan", "resnet", "mlp"])
def test_a_conditional_d_answers_to_the_label(arch):
    torch.manual_seed(0)
    G, D = build_models(Config(arch=arch, g_width=4, d_width=4, conditional=True, classes=CLASSES))
    if arch == "dcgan":
        nn.init.normal_(D.embed.weight)  # its N(0, 0.02) start would show too small a change
    for m in G.modules():  # conditional BatchNorm starts as plain BatchNorm (gamma 1, beta 0)
        if isinstance(m, ConditionalBatchNorm2d):
            nn.init.normal_(m.gamma.weight)
            nn.init.normal_(m.beta.weight)
    D.eval(), G.eval()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(D(x, torch.tensor([0, 0])), D(x, torch.tensor([1, 2])))
    z = torch.randn(2, 100)
    assert not torch.allclose(G(z, torch.tensor([0, 0])), G(z, torch.tensor([1, 2])))
    with pytest.raises(ValueError, match="needs the class labels"):
        D(x)


def test_gradient_penalties_take_batchnorm_out_of_dcgans_d(workdir):
    for config in (Config(loss="wgan-gp"), Config(r1=0.1), Config(loss="rpgan", r2=0.1)):
        _, D = build_models(config)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in D.modules())
    _, D = build_models(Config(loss="hinge"))
    assert any(isinstance(m, nn.BatchNorm2d) for m in D.modules())
    result = invoke("train", *TINY, "--steps", "1", "--loss", "wgan-gp", "--out", "r")
    assert result.exit_code == 0 and "wgan-gp: dcgan's D is built without BatchNorm" in result.stdout
    result = invoke("train", *TINY, "--steps", "1", "--r1", "1", "--out", "r1")
    assert result.exit_code == 0 and "R1/R2: dcgan's D is built without BatchNorm" in result.stdout


# --- checks ---------------------------------------------------------------------------------------

def test_mlp_refuses_a_batch_of_one_before_making_a_run(workdir):
    assert_one_line_error(invoke("train", *TINY, "--arch", "mlp", "--batch-size", "1", "--out",
                                 "r"), 1, "mlp's G normalises each layer over the batch",
                          "--batch-size 2 or more")
    assert not (workdir / "r").exists()


def test_a_model_too_large_to_build_is_refused_before_anything_is_allocated(workdir):
    result = invoke("train", "--steps", "1", "--g-width", "4096", "--d-width", "4096",
                    "--resolution", "128", "--z-dim", "16384", "--device", "cpu")
    assert_one_line_error(result, 1, "G would have 62,814,347,264 parameters", "--g-width")

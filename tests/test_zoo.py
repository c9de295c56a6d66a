"""The model zoo: every architecture, loss and conditioning trains, resumes exactly and samples;
the losses and penalties have their known values; spectral norm, DiffAugment, the projection
D, lazy regularisation and presets do what they say."""

import itertools
import json
import math

import pytest
import torch
from helpers import TINY, assert_one_line_error, image_folder, invoke, read_json
from torch import nn

from ganctl.config import Config
from ganctl.data import Batch, shapes
from ganctl.engine.state import init_state, load_state, snapshot, state_tensors
from ganctl.engine.step import train_step
from ganctl.errors import ConfigError
from ganctl.losses import LOSSES, Phase, StepInputs, augment, make_loss
from ganctl.models import ARCHS, build_models
from ganctl.models.layers import ConditionalBatchNorm2d, power_iterations, spectral_norms
from ganctl.presets import PRESETS
from ganctl.sample import generate, labels_for_seeds, latents_from_seeds

CLASSES = ("a", "b", "c")


def small(arch, loss, conditional, **extra):
    return Config(arch=arch, loss=loss, conditional=conditional, classes=CLASSES,
                  resolution=32, g_width=4, d_width=4, z_dim=8, batch_size=4, device="cpu",
                  r1=1.0, r2=1.0, r1_every=2, augment="diffaug", **extra)


def state_of(config):
    images = shapes.render(32, 3, n=64)
    labels = torch.arange(64) % 3
    return init_state(config, torch.device("cpu"), images, labels)


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


# --- losses and penalties --------------------------------------------------------------------------

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


class LinearD(nn.Module):
    """D(x) = <w, x>: its gradient in x is w everywhere, of norm |w|."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x, c=None):
        return x.flatten(1) @ self.w


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


# --- layers -------------------------------------------------------------------------------------------

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


def test_diffaugment_is_differentiable_and_keeps_the_shape():
    torch.manual_seed(0)
    G, _ = build_models(Config(g_width=4, d_width=4, z_dim=8))
    x = G(torch.randn(6, 8))
    policy = augment.make("diffaug")
    y = policy(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(x, y)
    y.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
    assert augment.parse("diffaug:color") == ["color"] and augment.make("") is None
    with pytest.raises(Exception, match="unknown policy 'flip'"):
        augment.parse("diffaug:flip")
    assert augment.parse("none") == augment.parse("off") == augment.parse("") == []
    assert augment.parse("diffaug") == list(augment.POLICIES)
    for spec, message in (("diffaug:", "an empty policy"), ("diffaug:,", "an empty policy"),
                          ("diffaug:color,,cutout", "an empty policy"),
                          ("diffaug:cutout,cutout", "names a policy twice"),
                          ("flip", "the augmentation is diffaug")):
        with pytest.raises(ConfigError, match=message):
            augment.parse(spec)


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


def test_mlp_refuses_a_batch_of_one_before_making_a_run(workdir):
    assert_one_line_error(invoke("train", *TINY, "--arch", "mlp", "--batch-size", "1", "--out",
                                 "r"), 1, "mlp's G normalises each layer over the batch",
                          "--batch-size 2 or more")
    assert not (workdir / "r").exists()


def test_settings_that_change_nothing_are_pointed_out(workdir):
    result = invoke("train", *TINY, "--steps", "1", "--gp", "5", "--r1-every", "4",
                    "--augment", "none", "--out", "r")
    assert result.exit_code == 0, result.output
    assert "--gp is the weight of wgan-gp's penalty; with --loss bce it does nothing" in result.stdout
    assert "without --r1 or --r2 it does nothing" in result.stdout
    assert read_json(workdir / "r" / "config.json")["augment"] == ""  # none is stored as off
    result = invoke("train", *TINY, "--steps", "1", "--loss", "wgan-gp", "--gp", "5", "--r1",
                    "1", "--r1-every", "4", "--out", "r2")
    assert result.exit_code == 0 and "does nothing" not in result.stdout


# --- conditioning needs labels, presets ----------------------------------------------------------------

def test_conditional_training_needs_every_image_in_a_class(workdir):
    image_folder(workdir / "flat", 8)
    assert_one_line_error(invoke("train", *TINY, "--conditional", "--dataset", "flat",
                                 "--resolution", "32", "--out", "r"), 1,
                          "--conditional needs labelled data", "flat' has no classes")
    image_folder(workdir / "mixed", 6, classes=2)
    image_folder(workdir / "mixed", 2)
    assert_one_line_error(invoke("train", *TINY, "--conditional", "--dataset", "mixed",
                                 "--resolution", "32", "--out", "r"), 1,
                          "2 images of", "are beside the class folders")
    assert not (workdir / "r").exists()


def test_presets_are_listed_applied_and_overridden(workdir):
    listed = json.loads(invoke("train", "--list-presets", "--json").stdout)
    assert {"dcgan-celeba64", "dcgan-cifar10", "sngan-cifar10", "cgan-cifar10", "mlp-mnist",
            "small-data", "r3-cifar10"} <= set(listed) == set(PRESETS)
    assert "resnet" in invoke("train", "--list-presets").stdout
    image_folder(workdir / "pics", 8)
    result = invoke("train", *TINY, "--preset", "small-data", "--dataset", "pics",
                    "--resolution", "32", "--g-width", "4", "--d-width", "4", "--batch-size",
                    "4", "--out", "r")
    assert result.exit_code == 0, result.output
    config = read_json(workdir / "r" / "config.json")
    assert config["preset"] == "small-data" and config["augment"] == "diffaug"
    assert (config["arch"], config["r1"], config["g_width"]) == ("resnet", 1.0, 4)  # flags win
    assert_one_line_error(invoke("train", "--preset", "biggan"), 1, "unknown preset 'biggan'")
    # a preset on another built-in dataset: that dataset's image size, and a note
    result = invoke("train", *TINY, "--preset", "mlp-mnist", "--dataset", "shapes", "--arch",
                    "dcgan", "--g-width", "4", "--d-width", "4", "--batch-size", "4", "--out", "m")
    assert result.exit_code == 0, result.output
    config = read_json(workdir / "m" / "config.json")
    assert (config["arch"], config["resolution"], config["channels"]) == ("dcgan", 32, 3)
    assert "preset mlp-mnist is made for mnist; on shapes the image size comes from that " \
        "dataset's defaults and your flags, not the preset: 32x32x3" in result.stdout
    # on a folder or zip (such as CIFAR-10 as JPEGs) the preset's size stays, and is named
    image_folder(workdir / "pics", 8)
    result = invoke("train", *TINY, "--preset", "mlp-mnist", "--dataset", "pics",
                    "--g-width", "4", "--d-width", "4", "--batch-size", "4", "--out", "m2")
    assert result.exit_code == 0, result.output
    config = read_json(workdir / "m2" / "config.json")
    assert (config["resolution"], config["channels"]) == (28, 1)
    assert "preset mlp-mnist is made for mnist; on pics it trains at 28x28x1 (--resolution " \
        "and --channels change that)" in result.stdout
    for preset in PRESETS.values():  # every preset is a valid config
        values = {**preset.settings, "dataset": "shapes", "resolution": 32,
                  "channels": preset.settings.get("channels", 3)}
        Config.from_dict({k: v for k, v in values.items() if k != "preset"})


def test_resume_compares_spectral_norm_by_its_effect(workdir):
    assert invoke("train", *TINY, "--out", "r").exit_code == 0  # dcgan: auto means off
    result = invoke("train", *TINY, "--steps", "6", "--no-spectral-norm", "--out", "r", "--resume")
    assert result.exit_code == 0, result.output
    assert read_json(workdir / "r" / "config.json")["spectral_norm"] == "auto"
    assert_one_line_error(invoke("train", *TINY, "--steps", "8", "--spectral-norm", "--out", "r",
                                 "--resume"), 1, "so spectral_norm cannot become 'on'")


def test_augment_is_stored_in_one_spelling():
    from ganctl.settings import resolve_config
    assert resolve_config({"augment": "DiffAug: color, cutout"}).augment == "diffaug:color,cutout"
    assert resolve_config({"augment": " NONE "}).augment == resolve_config({}).augment == ""


def test_a_conditional_state_needs_its_class_names_and_labels():
    config = small("resnet", "hinge", True)
    images = shapes.render(32, 3, n=64)
    for bad, labels in ((config.replace(classes=()), torch.arange(64) % 3), (config, None)):
        with pytest.raises(ConfigError, match="a conditional model needs the data's class names"):
            init_state(bad, torch.device("cpu"), images, labels)

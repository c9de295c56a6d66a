"""StyleGAN2's training rules (issue 24) through the engine and the command line: the lazy R1 and
path-length phases on schedule, weighted by their interval, with Adam's lr and betas scaled by
m / (m + 1) as in NVlabs' training loop; the path lengths' running mean (its lerp, its checkpoint
tensor, resume); style mixing past each image's crossover, drawn with the synthesis noise from the
run's generator; the EMA by half-life in images; exact resume after SIGTERM; no host syncs in the
step; NVlabs' presets and auto config; the divergence guard, --batch-size auto and --init-from.
Tiny networks (32 px, widths 8, z and w 8, channel_base 256, batch 4, eager): seconds on one thread."""

from __future__ import annotations

import copy
import json
import math
import signal

import numpy as np
import pytest
import torch
from helpers import (
    assert_same_tensors,
    events,
    final_tensors,
    invoke,
    nan_batches,
    read_json,
    signal_at,
    spy_host_reads,
    valid_steps,
)

from ganctl import session
from ganctl.config import Config
from ganctl.data import shapes
from ganctl.engine.state import init_state, load_state, snapshot, state_tensors
from ganctl.engine.step import EMA_WARMUP, ema_decay, train_step
from ganctl.losses import Phase, StepInputs
from ganctl.losses.base import PL_DECAY
from ganctl.models.generator import _mixing, run_G
from ganctl.presets import PRESETS, stylegan2_auto
from ganctl.settings import resolve_config

CPU = torch.device("cpu")
IMAGES = shapes.render(32, 3, n=32)  # (32, 3, 32, 32) uint8
CLASSES = ("a", "b")
BATCH = 4
# lazy R1 every 3 steps, path length every 2: steps 2, 3, 4 and 6 hold a lazy phase, 6 both
SG2 = dict(arch="stylegan2", resolution=32, g_width=8, d_width=8, z_dim=8, w_dim=8,
           channel_base=256, mapping_layers=2, batch_size=BATCH, compile="off", device="cpu",
           loss="bce", r1=1.0, r1_every=3, pl_weight=2.0, pl_every=2, pl_batch_shrink=2,
           style_mixing=0.9, beta1=0.0, beta2=0.99, lr_g=0.0025, lr_d=0.0025, spectral_norm="off")
# the same run on the command line (mapping 2 layers, beta1 0 ... come from stylegan2-auto)
ARGS = ["--arch", "stylegan2", "--resolution", "32", "--g-width", "8", "--d-width", "8",
        "--z-dim", "8", "--w-dim", "8", "--channel-base", "256", "--batch-size", "4",
        "--no-compile", "--r1", "1", "--r1-every", "3", "--pl-every", "2", "--device", "cpu",
        "--no-curves", "--log-every", "1", "--sample-every", "100"]


def config(**changes) -> Config:
    return Config(**{**SG2, **changes})


def fresh(**changes):
    cfg = config(**changes)
    labels = np.arange(len(IMAGES)) % len(CLASSES) if cfg.conditional else None
    return init_state(cfg, CPU, IMAGES, labels)


def inputs_of(state, z: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """A phase's inputs on the state's next real batch (plain backward, fp32)."""
    real = state.batches.next()
    z = torch.randn(BATCH, state.config.z_dim) if z is None else z
    return StepInputs(state.G, state.D, real, z, generator=generator, G_eager=state.G,
                      mix=state.loss.mixing)


def grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in module.parameters()]


def noisy(G: torch.nn.Module, strength: float = 0.5) -> None:
    """Non-zero noise strengths (NVlabs initialise them to 0): the synthesis noise then shows."""
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(strength)


# ---- 1. lazy phases: schedule, interval weight, Adam's correction --------------------------------


def test_lazy_r1_and_path_length_run_exactly_on_schedule(monkeypatch):
    state = fresh()
    phases = state.loss.phases()
    assert [(p.name, p.module, p.interval, p.repeats) for p in phases] == [
        ("D", "D", 1, 1), ("Dreg", "D", 3, 1), ("G", "G", 1, 1), ("Greg", "G", 2, 1)]
    ran: list[tuple[int, str, int]] = []
    for name in ("d_phase", "reg_phase", "g_phase", "pl_phase"):
        real = getattr(state.loss, name)

        def spy(phase, inputs, real=real):
            ran.append((state.step + 1, phase.name, phase.interval))
            return real(phase, inputs)
        monkeypatch.setattr(state.loss, name, spy)
    keys = []
    for _ in range(7):
        keys.append(set(train_step(state, phases)))
    runs = {name: [n for n, p, _ in ran if p == name] for name in ("D", "Dreg", "G", "Greg")}
    assert runs == {"D": [1, 2, 3, 4, 5, 6, 7], "Dreg": [3, 6], "G": [1, 2, 3, 4, 5, 6, 7],
                    "Greg": [2, 4, 6]}
    assert [(p, i) for n, p, i in ran if n == 6] == [("D", 1), ("Dreg", 3), ("G", 1), ("Greg", 2)]
    # the statistics say the same
    assert [n for n, k in enumerate(keys, 1) if "loss_R1" in k] == [3, 6]
    assert [n for n, k in enumerate(keys, 1) if {"loss_Gpl", "pl_mean"} <= k] == [2, 4, 6]


def test_r1_is_weighted_by_its_interval():
    state = fresh()
    z = torch.randn(BATCH, 8)
    real = state.batches.next()
    out = {}
    for k in (1, 3, 16):
        state.D.zero_grad(set_to_none=True)
        inputs = StepInputs(state.G, state.D, real, z, G_eager=state.G)
        stats = state.loss.reg_phase(Phase("Dreg", "D", interval=k), inputs)
        out[k] = stats["loss_R1"], grads(state.D)
    assert out[1][0] > 0
    for k in (3, 16):
        assert torch.equal(out[k][0], out[1][0])  # the statistic is the penalty itself
        for a, b in zip(out[k][1], out[1][1], strict=True):
            torch.testing.assert_close(a, k * b, rtol=1e-5, atol=1e-10)
    assert any(g.abs().sum() > 0 for g in out[1][1])


def test_path_length_is_weighted_by_its_interval():
    state = fresh()
    noisy(state.G)
    z = torch.randn(BATCH, 8)
    real = state.batches.next()
    out = {}
    for k in (1, 4):
        state.G.zero_grad(set_to_none=True)
        state.loss.pl_mean = torch.zeros([])
        w_avg = state.G.mapping.w_avg.clone()
        generator = torch.Generator().manual_seed(5)
        inputs = StepInputs(state.G, state.D, real, z, generator=generator, G_eager=state.G,
                            mix=state.loss.mixing)
        stats = state.loss.pl_phase(Phase("Greg", "G", interval=k), inputs)
        state.G.mapping.w_avg.copy_(w_avg)
        out[k] = stats, grads(state.G)
    assert torch.equal(out[4][0]["loss_Gpl"], out[1][0]["loss_Gpl"])
    assert torch.equal(out[4][0]["pl_mean"], out[1][0]["pl_mean"])
    for a, b in zip(out[4][1], out[1][1], strict=True):
        torch.testing.assert_close(a, 4 * b, rtol=1e-5, atol=1e-10)
    assert any(g.abs().sum() > 0 for g in out[1][1])


def test_adam_is_corrected_for_the_lazy_regularisers_as_nvlabs():
    def hyper(opt):
        group = opt.param_groups[0]
        return group["lr"], tuple(group["betas"])

    def scaled(lr, m):  # NVlabs: mb_ratio = reg_interval / (reg_interval + 1)
        ratio = m / (m + 1)
        return pytest.approx(lr * ratio), pytest.approx((0.0 ** ratio, 0.99 ** ratio))

    # NVlabs' own intervals: R1 every 16 (D: m 16), path length every 4 (G: m 4)
    state = fresh(r1_every=16, pl_every=4, lr_g=0.002, lr_d=0.003)
    assert hyper(state.opt_D) == scaled(0.003, 16)
    assert hyper(state.opt_G) == scaled(0.002, 4)
    assert state.opt_D.param_groups[0]["betas"][1] == pytest.approx(0.99 ** (16 / 17))
    # two D updates a step: R1 every 3 steps comes after 6 of them
    state = fresh(d_steps=2)
    assert hyper(state.opt_D) == scaled(0.0025, 6)
    assert hyper(state.opt_G) == scaled(0.0025, 2)
    # without a regulariser, Adam as given
    state = fresh(r1=0.0, pl_weight=0.0)
    assert [p.name for p in state.loss.phases()] == ["D", "G"]
    assert hyper(state.opt_D) == hyper(state.opt_G) == (0.0025, (0.0, 0.99))


# ---- 2. path-length regularisation -----------------------------------------------------------------


def reference_lengths(G, z, generator, shrink):
    """NVlabs' loss.py path lengths, written out here (no style mixing): the synthesis noise and
    then the image-space direction drawn from the run's generator."""
    batch = z.shape[0] // shrink
    noise = torch.randn(batch, G.noise_size, generator=generator)
    w = G.mapping(z[:batch])
    img = G.synthesis(w, noise=noise)
    y = torch.randn(img.shape, generator=generator) / math.sqrt(img.shape[2] * img.shape[3])
    (g,) = torch.autograd.grad((img * y).sum(), w)
    return g.square().sum(2).mean(1).sqrt()


def test_path_length_mean_follows_each_batch_at_rate_0_01():
    state = fresh(style_mixing=0.0)
    noisy(state.G)
    loss = state.loss
    generator = torch.Generator().manual_seed(1)
    mean = torch.zeros([])
    assert torch.equal(loss.pl_mean, mean)
    for _ in range(3):
        z = torch.randn(BATCH, 8)
        saved = generator.get_state()
        lengths = reference_lengths(copy.deepcopy(state.G), z, torch.Generator().manual_seed(0)
                                    .set_state(saved), 2)
        generator.set_state(saved)
        stats = loss.pl_phase(Phase("Greg", "G", interval=2), inputs_of(state, z, generator))
        expected = mean + PL_DECAY * (lengths.mean() - mean)  # lerp(mean, batch mean, 0.01)
        torch.testing.assert_close(loss.pl_mean, expected, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(stats["pl_mean"], expected, rtol=1e-5, atol=1e-8)
        penalty = (lengths - expected).square().mean() * 2.0
        torch.testing.assert_close(stats["loss_Gpl"], penalty, rtol=1e-4, atol=1e-8)
        mean = loss.pl_mean.clone()
    assert PL_DECAY == 0.01 and 0 < float(mean) < 1


@pytest.mark.parametrize("shrink,batch", [(1, 4), (2, 2), (4, 1)])
def test_path_length_runs_on_the_shrunk_batch(shrink, batch):
    state = fresh(pl_batch_shrink=shrink)
    sizes: list[int] = []
    state.G.synthesis.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    phases = state.loss.phases()
    train_step(state, phases)  # step 1: D and G share one G(z)
    assert sizes == [4]
    sizes.clear()
    train_step(state, phases)  # step 2: and Greg on batch / shrink
    assert sizes == [4, batch]


def test_path_length_mean_is_checkpointed_and_restored():
    state = fresh()
    phases = state.loss.phases()
    for _ in range(4):
        train_step(state, phases)
    saved = snapshot(state)
    assert "loss.pl_mean" in saved and saved["loss.pl_mean"].dtype == torch.float32
    assert torch.equal(saved["loss.pl_mean"], state.loss.pl_mean) and float(saved["loss.pl_mean"]) > 0
    resumed = fresh()
    assert float(resumed.loss.pl_mean) == 0
    load_state(resumed, {k: v.clone() for k, v in saved.items()})
    assert torch.equal(resumed.loss.pl_mean, state.loss.pl_mean)
    for _ in range(2):  # steps 5 and 6 (Greg at 6) go the same way from both
        a, b = train_step(state, phases), train_step(resumed, resumed.loss.phases())
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name
    assert_same_tensors(snapshot(state), snapshot(resumed))


def test_pl_weight_0_removes_the_greg_phase_and_its_state():
    state = fresh(pl_weight=0.0)
    assert [p.name for p in state.loss.phases()] == ["D", "Dreg", "G"]
    assert "loss.pl_mean" not in state_tensors(state)
    seen = set()
    for _ in range(4):
        seen |= set(train_step(state, state.loss.phases()))
    assert "loss_Gpl" not in seen and "pl_mean" not in seen and "loss_R1" in seen
    assert state.opt_G.param_groups[0]["lr"] == 0.0025  # no G regulariser: no correction
    # a generator without a mapping network has none either
    dcgan = init_state(Config(g_width=8, d_width=8, z_dim=8, batch_size=4, pl_weight=2.0),
                       CPU, IMAGES)
    assert "Greg" not in [p.name for p in dcgan.loss.phases()]


# ---- 3. style mixing -----------------------------------------------------------------------------


def spied_step(state):
    """One training step; what G's mapping returned and what its synthesis was given."""
    mapped, fed = [], []
    hooks = [state.G.mapping.register_forward_hook(lambda m, a, out: mapped.append(out.detach())),
             state.G.synthesis.register_forward_pre_hook(
                 lambda m, args, kwargs: fed.append((args[0].detach(), kwargs.get("noise"))),
                 with_kwargs=True)]
    try:
        train_step(state, state.loss.phases())
    finally:
        for h in hooks:
            h.remove()
    return mapped, fed


def test_full_style_mixing_changes_w_only_past_each_images_crossover():
    state = fresh(style_mixing=1.0)
    num_ws = state.G.num_ws
    replay = torch.Generator().set_state(state.noise.get_state())
    before = copy.deepcopy(state.G)  # the step updates G's weights
    mapped, fed = spied_step(state)  # step 1: one G(z) for D and G
    # the step's draws from the run's generator, replayed: z, then the second latents and cuts
    z = state.batches.latents(replay, 8)
    mix_z, cut = _mixing(before, z, 1.0, replay)
    assert len(mapped) == 2 and len(fed) == 1  # w of z, w of the second latents; one synthesis
    w, other = mapped
    ws, noise = fed[0]
    with torch.no_grad():
        assert torch.equal(w, before.mapping(z)) and torch.equal(other, before.mapping(mix_z))
    assert noise is not None and noise.shape == (BATCH, state.G.noise_size)
    assert ws.shape == w.shape == (BATCH, num_ws, 8)
    assert ((cut >= 1) & (cut < num_ws)).all()  # every image mixed, at a layer of its own
    assert len(set(cut.tolist())) > 1
    for i, k in enumerate(cut.tolist()):
        assert torch.equal(ws[i, :k], w[i, :k])  # the unmixed w before the crossover
        assert torch.equal(ws[i, k:], other[i, k:])  # the other latent's from it on
        assert (ws[i, k:] != w[i, k:]).any(dim=1).all()  # which differ there, layer by layer


def test_no_style_mixing_at_0():
    state = fresh(style_mixing=0.0)
    for _ in range(2):  # step 2 runs Greg too
        mapped, fed = spied_step(state)
        assert len(mapped) == len(fed)  # one mapping per synthesis: no second latents
        for w, (ws, noise) in zip(mapped, fed, strict=True):
            assert torch.equal(w, ws) and noise is not None


def test_style_mixing_share():
    G = fresh().G
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 8)
    other, cut = _mixing(G, z, 0.9, generator)
    assert other is not None and cut is not None and other.shape == z.shape
    mixed = cut < G.num_ws
    assert 0.88 < mixed.float().mean() < 0.92
    assert set(cut[mixed].tolist()) == set(range(1, G.num_ws))
    assert set(cut[~mixed].tolist()) == {G.num_ws}
    assert _mixing(G, z, 0.0, generator) == (None, None)


def test_mixing_and_noise_draw_from_the_runs_generator():
    def fakes(global_seed, noise_seed=None):
        state = fresh()
        noisy(state.G)
        if noise_seed is not None:
            state.noise.manual_seed(noise_seed)
        torch.manual_seed(global_seed)  # torch's own generator must play no part
        out = []
        state.G.synthesis.register_forward_hook(lambda m, a, img: out.append(img.detach()))
        for _ in range(2):  # step 2 runs Greg too
            train_step(state, state.loss.phases())
        return out

    a, b = fakes(1), fakes(2)
    assert len(a) == 3
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    c = fakes(1, noise_seed=99)
    assert not torch.equal(a[0], c[0])


def test_run_G_noise_and_mixing_are_the_generators():
    G = fresh().G
    noisy(G)
    z = torch.randn(BATCH, 8)
    out = [run_G(G, z, mix=0.9, generator=torch.Generator().manual_seed(3))[0] for _ in range(2)]
    assert torch.equal(out[0], out[1])
    other = run_G(G, z, mix=0.9, generator=torch.Generator().manual_seed(4))[0]
    assert not torch.equal(out[0], other)


# ---- 4. the EMA by half-life in images -------------------------------------------------------------


def test_ema_decay_by_half_life_in_images():
    for kimg, batch in ((10.0, 32), (0.5, 4), (20.0, 64)):
        cfg = config(ema_kimg=kimg, ema_rampup=0.0, batch_size=batch)
        for step in (1, 2, 100):
            assert ema_decay(cfg, step) == pytest.approx(0.5 ** (batch / (kimg * 1000)))
    cfg = config(ema_kimg=0.01, ema_rampup=0.5, batch_size=4)  # half-life 10 images, ramped
    assert ema_decay(cfg, 1) == 0.0  # nothing seen yet: G_ema is G
    for step in (2, 3, 4, 6, 7, 50):
        half_life = min(10.0, (step - 1) * 4 * 0.5)
        assert ema_decay(cfg, step) == pytest.approx(0.5 ** (4 / half_life)), step
    # without --ema-kimg: --ema-decay with its warm-up, as before
    for decay in (0.999, 0.9):
        cfg = config(ema_decay=decay, ema_rampup=0.05)
        for step in (1, 5, 100, 10**6):
            assert ema_decay(cfg, step) == min(decay, (1 + step) / (EMA_WARMUP + step))


def test_ema_in_the_step_with_rampup():
    state = fresh(ema_kimg=0.01, ema_rampup=0.5)
    phases = state.loss.phases()
    train_step(state, phases)
    for a, b in zip(state.G_ema.parameters(), state.G.parameters(), strict=True):
        assert torch.equal(a, b)  # beta 0 at step 1
    for a, b in zip(state.G_ema.buffers(), state.G.buffers(), strict=True):
        assert torch.equal(a, b)  # w_avg and noise_const follow G
    for step in (2, 3):
        before = [p.clone() for p in state.G_ema.parameters()]
        train_step(state, phases)
        beta = 0.5 ** (4 / min(10.0, (step - 1) * 4 * 0.5))  # 0.25, then 0.5
        assert ema_decay(state.config, step) == pytest.approx(beta)
        for old, ema, g in zip(before, state.G_ema.parameters(), state.G.parameters(), strict=True):
            torch.testing.assert_close(ema, beta * old + (1 - beta) * g, rtol=1e-6, atol=1e-7)
        assert any(not torch.equal(e, g) for e, g in
                   zip(state.G_ema.parameters(), state.G.parameters(), strict=True))


# ---- 5. exact resume after SIGTERM -----------------------------------------------------------------


def test_sigterm_then_resume_equals_an_uninterrupted_stylegan2_run(workdir, monkeypatch):
    signal_at(monkeypatch, 3, signal.SIGTERM)  # after Greg (2) and Dreg (3)
    result = invoke("train", *ARGS, "--steps", "100", "--ckpt-every", "1000", "--out", "r")
    assert result.exit_code == 143, result.output
    assert "stopped by SIGTERM at step 3; checkpoint r/checkpoints/step-000000003.safetensors" \
        in result.stderr
    assert valid_steps(workdir / "r") == [3]
    result = invoke("resume", "r", "--steps", "6", "--ckpt-every", "1000")
    assert result.exit_code == 0, result.output
    assert valid_steps(workdir / "r") == [3, 6]
    reference = invoke("train", *ARGS, "--steps", "6", "--ckpt-every", "1000", "--out", "ref")
    assert reference.exit_code == 0, reference.output
    (step_a, a), (step_b, b) = final_tensors(workdir / "r"), final_tensors(workdir / "ref")
    assert step_a == step_b == 6
    assert float(a["loss.pl_mean"]) > 0 and "G.mapping.w_avg" in a
    assert any(k.startswith("G.synthesis.b32.conv0.noise_strength") for k in a)
    assert_same_tensors(a, b)
    stored = read_json(workdir / "r" / "config.json")
    assert (stored["arch"], stored["style_mixing"], stored["pl_every"]) == ("stylegan2", 0.9, 2)


# ---- 6. no host syncs ----------------------------------------------------------------------------



@pytest.mark.parametrize("changes", [
    {}, {"conditional": True, "classes": CLASSES, "r2": 1.0, "precision": "bf16"},
    {"precision": "fp16", "d_steps": 2},
], ids=["plain", "conditional-r1r2-bf16", "fp16-2dsteps"])
def test_the_stylegan2_step_reads_nothing_back_from_the_device(monkeypatch, changes):
    state = fresh(**changes)
    phases = state.loss.phases()
    calls = spy_host_reads(monkeypatch)
    seen = set()
    for _ in range(4):  # Greg at 2 and 4, Dreg at 3
        seen |= set(train_step(state, phases))
    monkeypatch.undo()
    assert calls == []
    assert {"loss_R1", "loss_Gpl"} <= seen


# ---- 7. presets and NVlabs' auto config ---------------------------------------------------------


def nvlabs_auto(res: int, gpus: int) -> dict:
    """NVlabs' train.py, cfg == 'auto', written out here."""
    mb = max(min(gpus * min(4096 // res, 32), 64), gpus)
    return {"batch_size": mb, "mbstd_group": min(mb // gpus, 4),
            "channel_base": int((1 if res >= 512 else 0.5) * 32768),
            "lr_g": 0.002 if res >= 1024 else 0.0025, "lr_d": 0.002 if res >= 1024 else 0.0025,
            "r1": 0.0002 * res**2 / mb, "ema_kimg": mb * 10 / 32, "ema_rampup": 0.05,
            "mapping_layers": 2}


@pytest.mark.parametrize("gpus", [1, 2, 8])
@pytest.mark.parametrize("res", [32, 256, 1024])
def test_stylegan2_auto_is_nvlabs_formula(res, gpus):
    auto = stylegan2_auto(res, gpus)
    for key, value in nvlabs_auto(res, gpus).items():
        assert auto[key] == pytest.approx(value), key
    assert (auto["r1_every"], auto["pl_every"], auto["pl_weight"], auto["style_mixing"]) == \
        (16, 4, 2.0, 0.9)
    assert (auto["beta1"], auto["beta2"], auto["g_width"], auto["d_width"]) == (0.0, 0.99, 512, 512)


def test_stylegan2_auto_known_values():
    assert stylegan2_auto(256, 1)["batch_size"] == 16 and stylegan2_auto(256, 8)["batch_size"] == 64
    assert stylegan2_auto(1024, 1)["batch_size"] == 4 and stylegan2_auto(1024, 8)["batch_size"] == 32
    assert stylegan2_auto(32, 1)["batch_size"] == 32 and stylegan2_auto(1024, 2)["mbstd_group"] == 4
    assert stylegan2_auto(256, 1)["r1"] == pytest.approx(0.8192)


def test_stylegan2_presets_are_listed(workdir):
    listed = json.loads(invoke("train", "--list-presets", "--json").stdout)
    names = {"stylegan2-256", "stylegan2-1024", "stylegan2-cifar10", "stylegan2-auto"}
    assert names <= set(listed)
    text = invoke("train", "--list-presets").stdout
    assert all(name in text for name in names)
    cifar = listed["stylegan2-cifar10"]["settings"]  # NVlabs' cifar
    assert (cifar["mapping_layers"], cifar["r1"], cifar["pl_weight"], cifar["style_mixing"],
            cifar["d_arch"], cifar["ema_kimg"], cifar["batch_size"], cifar["mbstd_group"]) == \
        (2, 0.01, 0.0, 0.0, "orig", 500.0, 64, 32)
    big = listed["stylegan2-1024"]["settings"]  # NVlabs' paper1024
    assert (big["batch_size"], big["channel_base"], big["lr_g"], big["r1"], big["ema_kimg"],
            big["mbstd_group"], big["mapping_layers"]) == (32, 32768, 0.002, 2.0, 10.0, 4, 8)


def printed(*args) -> tuple[dict, dict]:
    result = invoke("train", "--print-config", "--json", *args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    return doc["config"], doc["sources"]


def test_print_config_shows_nvlabs_auto_values_and_flags_override(workdir):
    cfg, sources = printed("--arch", "stylegan2", "--resolution", "256")
    expected = {"batch_size": 16, "r1": 0.0002 * 256**2 / 16, "ema_kimg": 5.0, "ema_rampup": 0.05,
                "channel_base": 16384, "lr_g": 0.0025, "lr_d": 0.0025, "mapping_layers": 2,
                "mbstd_group": 4, "r1_every": 16, "pl_every": 4, "pl_weight": 2.0,
                "style_mixing": 0.9, "beta1": 0.0, "beta2": 0.99, "loss": "bce"}
    for key, value in expected.items():
        assert cfg[key] == pytest.approx(value), key
        assert sources[key] == "stylegan2-auto (256 px, 1 GPU)", key
    cfg, _ = printed("--arch", "stylegan2", "--resolution", "512")
    assert (cfg["channel_base"], cfg["lr_g"], cfg["batch_size"]) == (32768, 0.0025, 8)
    cfg, _ = printed("--arch", "stylegan2", "--resolution", "1024")
    assert (cfg["channel_base"], cfg["lr_g"], cfg["batch_size"], cfg["r1"]) == \
        (32768, 0.002, 4, pytest.approx(0.0002 * 1024**2 / 4))
    cfg, sources = printed("--arch", "stylegan2", "--resolution", "256", "--batch-size", "32",
                           "--r1", "5", "--ema-kimg", "2", "--mapping-layers", "8", "--lr-g", "0.001")
    assert (cfg["batch_size"], cfg["r1"], cfg["ema_kimg"], cfg["mapping_layers"], cfg["lr_g"]) == \
        (32, 5.0, 2.0, 8, 0.001)
    assert sources["batch_size"] == sources["r1"] == "flag"
    assert cfg["lr_d"] == 0.0025  # the others stay auto's
    cfg, _ = printed("--preset", "stylegan2-auto", "--resolution", "64")
    assert (cfg["arch"], cfg["batch_size"], cfg["r1"]) == ("stylegan2", 32, pytest.approx(0.0256))


def test_preset_stylegan2_256_is_nvlabs_paper256(workdir):
    cfg, sources = printed("--preset", "stylegan2-256")
    expected = {"arch": "stylegan2", "resolution": 256, "batch_size": 64, "channel_base": 16384,
                "g_width": 512, "lr_g": 0.0025, "lr_d": 0.0025, "r1": 1.0, "mapping_layers": 8,
                "ema_kimg": 20.0, "ema_rampup": 0.0, "mbstd_group": 8, "r1_every": 16,
                "pl_every": 4, "pl_weight": 2.0, "style_mixing": 0.9, "z_dim": 512, "w_dim": 512}
    for key, value in expected.items():
        assert cfg[key] == value, key
    assert sources["batch_size"] == "preset stylegan2-256"
    cfg, _ = printed("--preset", "stylegan2-256", "--batch-size", "8", "--r1", "2")
    assert (cfg["batch_size"], cfg["r1"], cfg["mbstd_group"]) == (8, 2.0, 8)


def test_a_run_on_two_gpus_resolves_the_auto_config_for_two(monkeypatch):
    """What each process of `train --gpus 2` (torchrun's world of 2) trains."""
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    cfg = resolve_config({"arch": "stylegan2", "resolution": 256})
    assert (cfg.batch_size, cfg.r1, cfg.ema_kimg, cfg.mbstd_group) == \
        (32, pytest.approx(0.0002 * 256**2 / 32), 10.0, 4)


def test_print_config_with_gpus_shows_the_auto_config_for_those_gpus(workdir):
    cfg, sources = printed("--arch", "stylegan2", "--resolution", "256", "--gpus", "2")
    assert (cfg["batch_size"], cfg["r1"], cfg["ema_kimg"]) == \
        (32, pytest.approx(0.0002 * 256**2 / 32), 10.0)
    assert sources["batch_size"] == "stylegan2-auto (256 px, 2 GPUs)"


def test_every_stylegan2_preset_is_a_valid_config():
    for name in ("stylegan2-256", "stylegan2-1024", "stylegan2-cifar10", "stylegan2-auto"):
        settings = {**PRESETS[name].settings, "resolution": 32}
        Config.from_dict({**settings, "dataset": "shapes"})


# ---- 8. the divergence guard, --batch-size auto, --init-from --------------------------------------


def test_divergence_guard_rolls_a_stylegan2_run_back(workdir, monkeypatch):
    nan_batches(monkeypatch, steps={4})  # a step with Greg: pl_mean turns NaN with the rest
    result = invoke("train", *ARGS, "--steps", "6", "--ckpt-every", "2", "--out", "r")
    assert result.exit_code == 0, result.output
    assert "became non-finite at step 4: rolled back to step 2, learning rates x0.5" in result.stdout
    rollbacks = [e for e in events(workdir / "r") if e["event"] == "rollback"]
    assert [(e["step"], e["to_step"]) for e in rollbacks] == [(4, 2)]
    _, final = final_tensors(workdir / "r")
    # Adam's rates halved, the lazy-regulariser correction (R1 every 3, path length every 2) kept
    assert float(final["opt_D.lr.0"]) == pytest.approx(0.0025 * 3 / 4 * 0.5)
    assert float(final["opt_G.lr.0"]) == pytest.approx(0.0025 * 2 / 3 * 0.5)
    assert all(v.float().isfinite().all() for k, v in final.items()
               if k.startswith(("G.", "D.", "G_ema.", "opt_", "loss.")))
    assert float(final["loss.pl_mean"]) > 0
    assert valid_steps(workdir / "r") == [2, 4, 6]


def test_batch_size_auto_with_stylegan2_on_the_cpu(workdir):
    args = [a for i, a in enumerate(ARGS) if "--batch-size" not in (a, ARGS[i - 1])]
    result = invoke("train", *args, "--batch-size", "auto", "--steps", "2", "--ckpt-every", "2",
                    "--out", "r")
    assert result.exit_code == 0, result.output
    assert "--batch-size auto: 64 (memory is measured on CUDA GPUs only" in result.stdout
    stored = read_json(workdir / "r" / "config.json")
    assert stored["batch_size"] == 64
    assert stored["r1"] == 1.0 and stored["ema_kimg"] == pytest.approx(32 * 10 / 32)  # auto at 32 px
    _, tensors = final_tensors(workdir / "r")
    assert int(tensors["state.data_index"]) == 2 * 64


def test_init_from_a_stylegan2_checkpoint(workdir, monkeypatch):
    result = invoke("train", *ARGS, "--steps", "2", "--ckpt-every", "2", "--out", "src")
    assert result.exit_code == 0, result.output
    seen = {}
    real_fit = session.fit

    def spy(state, *args, **kwargs):
        seen["step"] = state.step
        seen["pl_mean"] = float(state.loss.pl_mean)
        seen["tensors"] = {f"{name}.{k}": v.detach().clone() for name in ("G", "D", "G_ema")
                           for k, v in getattr(state, name).state_dict().items()}
        return real_fit(state, *args, **kwargs)

    monkeypatch.setattr(session, "fit", spy)
    result = invoke("train", "--init-from", "src", "--steps", "2", "--batch-size", "4",
                    "--no-compile", "--device", "cpu", "--no-curves", "--out", "ft", "--json")
    assert result.exit_code == 0, result.output
    _, tensors = final_tensors(workdir / "src")
    assert seen["step"] == 0 and seen["pl_mean"] == 0.0  # a new run: its own path-length mean
    assert seen["tensors"].keys() == {k for k in tensors if k.split(".")[0] in ("G", "D", "G_ema")}
    assert "G.mapping.w_avg" in seen["tensors"]
    for name, value in seen["tensors"].items():
        assert torch.equal(value, tensors[name].to(value.dtype)), name
    stored = read_json(workdir / "ft" / "config.json")
    assert (stored["arch"], stored["channel_base"], stored["g_width"], stored["w_dim"],
            stored["mapping_layers"]) == ("stylegan2", 256, 8, 8, 2)  # the checkpoint's model


def test_the_path_length_mean_is_averaged_over_the_processes():
    """Each process measures path lengths on its share of the batch; after a Greg phase the
    step averages their running means, so every process holds the checkpoint's value and a
    several-process run resumes exactly (one process: unchanged, bit for bit)."""
    from ganctl.losses import make_loss

    loss = make_loss(Config(arch="stylegan2"))
    loss.pl_mean = torch.tensor(0.3)
    loss.share(lambda tensors: None)  # one process: the sum is itself
    assert torch.equal(loss.pl_mean, torch.tensor(0.3))
    other = torch.tensor([0.5, 1.0])  # another process's mean, and its count

    def two(tensors):
        tensors[0].add_(other)

    loss.share(two)
    assert torch.isclose(loss.pl_mean, torch.tensor(0.4))

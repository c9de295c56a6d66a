"""Adaptive discriminator augmentation (ganctl/augment/ada.py, pipeline.py): the transforms,
p's update, its state through checkpoints, resume and fine-tuning, what a run shows of it, and
that it works with every architecture, loss and penalty."""

from __future__ import annotations

import json
import math
import signal

import pytest
import torch
from helpers import assert_same_tensors, final_tensors, invoke, signal_at

from ganctl.augment import ada, make, ops, pipeline
from ganctl.augment.ada import P_MAX, AdaptiveAugment, Options
from ganctl.augment.pipeline import PIPES, Draws, Pipeline
from ganctl.errors import ConfigError

TINY = ["--device", "cpu", "--batch-size", "8", "--g-width", "8", "--d-width", "8",
        "--no-curves", "--sample-every", "1000", "--log-every", "1"]
LUMA = torch.tensor([1.0, 1.0, 1.0]) / math.sqrt(3)


def images(n: int = 6, c: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def run(on: dict[str, float], x: torch.Tensor, p: float = P_MAX, seed: int = 1) -> torch.Tensor:
    draws = Draws(torch.Generator().manual_seed(seed), x.device, len(x), len(x), 0)
    return Pipeline(on)(x, torch.tensor(p), draws)


# ---- the transforms --------------------------------------------------------------------------


@pytest.mark.parametrize("pipe", sorted(PIPES))
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_at_p_0_every_pipe_is_the_identity_bit_for_bit(pipe, channels):
    x = images(c=channels)
    augment = AdaptiveAugment(Options(pipe=pipe))
    assert float(augment.p) == 0.0
    out = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


def test_an_x_flip_is_the_mirror_image():
    x = images(n=32)
    out = run({"xflip": 1}, x)
    flipped = [torch.equal(o, xi.flip(2)) for o, xi in zip(out, x, strict=True)]
    same = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert 8 < sum(flipped) < 24  # each image flipped with probability 1/2


def test_a_quarter_turn_is_rot90():
    x = images(n=32)
    out = run({"rotate90": 1}, x)
    turns = [[k for k in range(4) if torch.equal(o, torch.rot90(xi, k, (1, 2)))]
             for o, xi in zip(out, x, strict=True)]
    assert all(len(t) == 1 for t in turns)
    assert {t[0] for t in turns} == {0, 1, 2, 3}


def test_an_integer_translation_moves_whole_pixels_and_mirrors_the_border():
    x = images(n=16, size=32)
    out = run({"xint": 1}, x)
    for o, xi in zip(out, x, strict=True):
        found = [(dx, dy) for dx in range(-4, 5) for dy in range(-4, 5)
                 if torch.equal(o[:, 4:-4, 4:-4], torch.roll(xi, (dy, dx), (1, 2))[:, 4:-4, 4:-4])]
        assert len(found) == 1
        dx, dy = found[0]
        if dx > 0:  # the new columns on the left are the mirror of the image's first ones
            assert torch.equal(o[:, :, :dx].flip(2)[:, 4:-4] if dy == 0 else o[:, :, :dx].flip(2)[:, 4:-4],
                               torch.roll(xi, dy, 1)[:, 4:-4, 1:dx + 1])


def test_brightness_shifts_every_pixel_of_an_image_by_one_amount():
    x = images(n=16)
    out = run({"brightness": 1}, x)
    shift = (out - x).flatten(1)
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-6)
    assert shift[:, 0].abs().min() > 0 and shift[:, 0].std() > 0.05  # moves the mean, not alike
    assert torch.allclose(out.mean((1, 2, 3)) - x.mean((1, 2, 3)), shift[:, 0], atol=1e-6)


def test_contrast_scales_about_zero():
    x = images(n=16)
    out = run({"contrast": 1}, x)
    ratio = out.flatten(1) / x.flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4)


@pytest.mark.parametrize("transform", ["hue", "saturation"])
def test_hue_rotation_and_saturation_keep_luma(transform):
    x = images(n=16)
    out = run({transform: 1}, x)
    luma = torch.einsum("c,nchw->nhw", LUMA, x)
    assert torch.allclose(torch.einsum("c,nchw->nhw", LUMA, out), luma, atol=1e-5)
    assert (out - x).abs().max() > 0.1


def test_a_luma_flip_negates_luma_and_keeps_chroma():
    x = images(n=32)
    out = run({"lumaflip": 1}, x)
    luma_in, luma_out = (torch.einsum("c,nchw->nhw", LUMA, t) for t in (x, out))
    chroma_in = x - LUMA[None, :, None, None] * luma_in[:, None]
    chroma_out = out - LUMA[None, :, None, None] * luma_out[:, None]
    flipped = torch.isclose(luma_out, -luma_in, atol=1e-5).flatten(1).all(1)
    kept = torch.isclose(luma_out, luma_in, atol=1e-5).flatten(1).all(1)
    assert bool((flipped | kept).all()) and 4 < int(flipped.sum()) < 28
    assert torch.allclose(chroma_out, chroma_in, atol=1e-5)


def test_grayscale_images_stay_grayscale_through_the_colour_transforms():
    x = images(n=8, c=1)
    out = run(dict.fromkeys(pipeline.COLOR, 1.0), x)
    assert out.shape == x.shape and (out - x).abs().max() > 0.01


def test_cutout_zeroes_a_square_of_half_the_size():
    x = images(n=8, size=16) + 3  # no pixel is 0 before
    out = run({"cutout": 1}, x)
    zeros = (out == 0).all(dim=1)  # (N, H, W)
    for z in zeros:
        rows, cols = z.any(1).nonzero(), z.any(0).nonzero()
        assert 1 <= len(rows) <= 8 and 1 <= len(cols) <= 8  # up to 8x8, clipped at the edges
        assert int(z.sum()) == len(rows) * len(cols)  # one rectangle


def test_unit_band_gains_are_the_identity_and_the_bank_sums_to_an_impulse():
    bank = ops.filter_bank(torch.device("cpu"))
    assert bank.shape == (4, 43)
    impulse = torch.zeros(43)
    impulse[21] = 1
    assert torch.allclose(bank.sum(0), impulse, atol=1e-6)
    x = images()
    assert torch.allclose(ops.band_filter(x, torch.ones(len(x), 4)), x, atol=1e-5)


def test_the_warp_of_the_identity_gives_the_image_back():
    x = images(size=32)
    assert torch.allclose(ops.warp(x, torch.eye(3).expand(len(x), 3, 3)), x, atol=1e-4)


def test_general_geometry_moves_content_without_dark_borders():
    x = torch.full((16, 3, 32, 32), 0.5)  # a flat image stays flat under any warp that does not leak
    out = run(dict.fromkeys(pipeline.GEOM, 1.0), x)
    assert torch.allclose(out, x, atol=1e-4)


@pytest.mark.parametrize("pipe", ["bgc", "bgcfnc"])
def test_gradients_reach_the_input_and_differentiate_twice(pipe):
    x = images(n=4).requires_grad_(True)
    w = torch.randn(3, requires_grad=True)
    out = run(dict.fromkeys(PIPES[pipe], 1.0), x, p=0.7)
    (grad,) = torch.autograd.grad((out * w[None, :, None, None]).square().sum(), x, create_graph=True)
    assert grad.abs().sum() > 0
    grad.square().sum().backward()  # R1 through the augmentation: D's weights get a gradient
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_every_process_draws_the_global_batch_and_keeps_its_rows():
    x = images(n=8)
    whole = run(dict.fromkeys(PIPES["bgcfnc"], 1.0), x, p=0.6, seed=3)
    halves = []
    for offset in (0, 4):
        draws = Draws(torch.Generator().manual_seed(3), x.device, 4, 8, offset)
        halves.append(Pipeline(dict.fromkeys(PIPES["bgcfnc"], 1.0))(x[offset:offset + 4],
                                                                     torch.tensor(0.6), draws))
    torch.testing.assert_close(torch.cat(halves), whole, atol=1e-5, rtol=0)


# ---- p ----------------------------------------------------------------------------------------


def test_p_follows_the_formula_on_a_scripted_sequence_of_d_outputs():
    augment = AdaptiveAugment(Options(target=0.6, interval=2, kimg=0.5))
    augment.rows(8, 0)
    step = 8 * 2 / 500  # batch x interval / (kimg x 1000)
    script = [[1.0] * 8, [2.0] * 7 + [-1.0], [-1.0] * 8, [-3.0] * 4 + [3.0] * 4, [0.5] * 8,
              [0.5] * 8] + [[1.0] * 8] * 70
    expected, rts = 0.0, []
    for i, logits in enumerate(script, start=1):
        augment.observe(torch.tensor(logits))
        if i % 2 == 0:
            augment.deliver(lambda tensors: None)  # one process
            signs = [math.copysign(1, v) for v in script[i - 2] + script[i - 1]]
            rt = sum(signs) / len(signs)
            rts.append(rt)
            expected = min(max(expected + math.copysign(step, rt - 0.6) * (rt != 0.6), 0.0), P_MAX)
            assert float(augment.rt) == pytest.approx(rt)
            assert float(augment.p) == pytest.approx(expected, abs=1e-6)
    assert rts[:3] == [0.875, -0.5, 1.0] and float(augment.p) < 1.0
    assert float(augment.p) == pytest.approx(P_MAX)  # clamped below 1


def test_a_fixed_p_does_not_move_but_r_t_is_measured():
    augment = make("ada:p=0.3")
    augment.rows(4, 0)
    for _ in range(8):
        augment.observe(torch.ones(4))
        augment.deliver(lambda tensors: None)
    assert float(augment.p) == pytest.approx(0.3) and float(augment.rt) == 1.0


@pytest.mark.parametrize("spec, says", [
    ("ada:target=2", "target=2 must be in [-1, 1)"),
    ("ada:interval=0", "interval=0 must be from 1 to 1,000,000,000"),
    ("ada:interval=2.5", "interval=2.5 is not a whole number"),
    ("ada:targ=0.5", "unknown option 'targ' (did you mean 'target'?)"),
    ("ada:kimg=-1", "kimg=-1 must be positive"),
    ("ada:kimg=nan", "kimg must be finite"),
    ("ada:pipe=xyz", "pipe 'xyz' is not one of"),
    ("ada:p=1", "p=1 must be in [0, 1)"),
    ("ada:start=-0.1", "start=-0.1 must be in [0, 1)"),
    ("ada:p=0.2,kimg=10", "p= fixes p"),
    ("ada:speed=2", "unknown option 'speed'"),
    ("ada:kimg", "'kimg' is not key=value"),
    ("ada:kimg=1,kimg=2", "sets kimg twice"),
    ("adaptive", "the augmentation is diffaug or ada"),
])
def test_a_bad_spec_is_refused_in_one_line(spec, says):
    with pytest.raises(ConfigError, match="^augment ") as e:
        make(spec)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_the_cli_refuses_a_bad_spec_before_training(workdir):
    result = invoke("train", *TINY, "--steps", "1", "--augment", "ada:pipe=bgq", "--out", "r")
    assert result.exit_code in (1, 2)
    assert "pipe 'bgq' is not one of" in result.stderr and not (workdir / "r").exists()


def test_the_defaults_are_nvlabs():
    o = ada.parse(None, "ada")
    assert (o.target, o.interval, o.kimg, o.pipe, o.p) == (0.6, 4, 500.0, "bgc", None)
    assert PIPES["bgc"] == (*pipeline.BLIT, *pipeline.GEOM, *pipeline.COLOR)


# ---- runs -------------------------------------------------------------------------------------


def test_p_is_logged_shown_and_resumed_exactly_after_sigterm(workdir, monkeypatch):
    args = [*TINY, "--augment", "ada:kimg=0.2,interval=2", "--ckpt-every", "1000"]
    signal_at(monkeypatch, 5, signal.SIGTERM)  # between two updates of p
    result = invoke("train", *args, "--steps", "100", "--out", "r")
    assert result.exit_code == 143, result.output
    assert invoke("resume", "r", "--steps", "10").exit_code == 0
    reference = invoke("train", *args, "--steps", "10", "--log-every", "4", "--out", "ref")
    assert reference.exit_code == 0, reference.output
    (step_a, a), (step_b, b) = final_tensors(workdir / "r"), final_tensors(workdir / "ref")
    assert step_a == step_b == 10
    assert 0 < float(a["loss.augment.p"]) < 1
    assert_same_tensors(a, b)
    records = [json.loads(line) for line in (workdir / "ref" / "metrics.jsonl").read_text().splitlines()]
    # a record shows p and r_t as they are after its last step, not averaged over its steps
    logged = [(r["step"], r["augment_p"], r.get("augment_rt")) for r in records if "augment_p" in r]
    assert [s for s, _, _ in logged] == [4, 8, 10]
    assert logged[-1][1] == pytest.approx(float(b["loss.augment.p"]), abs=1e-6)
    assert logged[-1][2] == pytest.approx(float(b["loss.augment.rt"]), abs=1e-6)
    assert "p 0." in reference.stdout and "r_t " in reference.stdout
    first = invoke("train", *args, "--steps", "1", "--out", "one")  # r_t not measured yet
    assert "r_t" not in first.stdout and "augment_rt" not in (workdir / "one" / "metrics.jsonl").read_text()
    shown = invoke("inspect", "ref", "--json")
    assert json.loads(shown.stdout)["augment_p"] == pytest.approx(float(b["loss.augment.p"]))
    assert "augment p" in invoke("inspect", "ref").stdout


def test_a_high_p_says_once_that_the_data_is_too_small(workdir):
    rising = "ada:start=0.75,target=-1,kimg=0.1,interval=1"  # up 0.08 a step
    result = invoke("train", *TINY, "--steps", "4", "--augment", rising, "--out", "r")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("the data is probably too small for this model") == 1
    # a run that starts above (fine-tuned from that one, or resumed) was told already
    for args in (["train", *TINY, "--steps", "2", "--augment", "ada", "--init-from", "r",
                  "--out", "tuned"], ["resume", "r", "--steps", "6"]):
        again = invoke(*args)
        assert again.exit_code == 0, again.output
        assert "too small" not in again.stdout


def test_init_from_starts_with_the_source_runs_p_unless_told(workdir):
    assert invoke("train", *TINY, "--steps", "2", "--augment", "ada:start=0.4",
                  "--out", "src").exit_code == 0
    _, src = final_tensors(workdir / "src")
    p = float(src["loss.augment.p"])
    runs = {"same": "ada", "told": "ada:start=0.1", "fixed": "ada:p=0.2"}
    for name, spec in runs.items():
        result = invoke("train", *TINY, "--steps", "1", "--init-from", "src", "--augment", spec,
                        "--ckpt-every", "1", "--out", name)
        assert result.exit_code == 0, result.output
    first = {name: float(final_tensors(workdir / name)[1]["loss.augment.p"]) for name in runs}
    assert first["same"] == pytest.approx(p, abs=1e-3)  # one step of 8 images at kimg 500 later
    assert first["told"] == pytest.approx(0.1, abs=1e-3) and first["fixed"] == pytest.approx(0.2)


@pytest.mark.parametrize("arch, flags", [
    ("mlp", ["--loss", "bce", "--resolution", "28"]),
    ("dcgan", ["--loss", "wgan-gp"]),
    ("dcgan", ["--loss", "rpgan", "--r1", "1", "--r2", "1", "--r1-every", "2"]),
    ("resnet", ["--loss", "hinge", "--d-steps", "2"]),
    ("dcgan", ["--loss", "lsgan", "--precision", "bf16"]),
    ("stylegan2", ["--z-dim", "8", "--w-dim", "8", "--channel-base", "256", "--r1", "1",
                   "--r1-every", "2", "--pl-every", "2"]),
])
def test_ada_trains_with_every_architecture_loss_and_penalty(workdir, arch, flags):
    result = invoke("train", *TINY, "--arch", arch, *flags, "--steps", "4",
                    "--augment", "ada:kimg=0.1,interval=1,pipe=bgcfnc,start=0.5", "--out", "r")
    assert result.exit_code == 0, result.output
    _, tensors = final_tensors(workdir / "r")
    records = [json.loads(line) for line in (workdir / "r" / "metrics.jsonl").read_text().splitlines()]
    moves = [r["augment_p"] for r in records if "augment_p" in r]
    assert len(moves) == 4 and all(abs(abs(m - 0.5) - k * 0.08) < 1e-4 or abs(m - 0.5) < k * 0.08
                                   for k, m in enumerate(moves, start=1))
    assert moves[-1] == pytest.approx(float(tensors["loss.augment.p"]), abs=1e-5)
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def test_the_small_data_preset_uses_ada(workdir):
    result = invoke("train", "--preset", "small-data", "--print-config")
    assert result.exit_code == 0, result.output
    assert any(line.split()[:2] == ["augment", "ada"] for line in result.stdout.splitlines())


# ---- p on little data and on plenty -------------------------------------------------------------

DIRECTION = ["--device", "cpu", "--resolution", "32", "--batch-size", "8", "--g-width", "16",
             "--d-width", "16", "--steps", "200", "--log-every", "50", "--no-curves",
             "--sample-every", "1000", "--augment", "ada:kimg=1"]


def _textures(root, n: int = 64):
    """n images of smooth random colour (a small, varied dataset D can learn by heart)."""
    from PIL import Image

    root.mkdir()
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)
    for i, image in enumerate((x * 255).round().to(torch.uint8)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / f"{i:02d}.png")
    return root


@pytest.mark.parametrize("data", ["64 images", "shapes"])
def test_p_rises_on_64_images_and_stays_lower_on_endless_shapes(workdir, data):
    """D learns 64 images by heart: r_t stays high and p climbs past 0.8 in 200 steps (kimg 1:
    0.032 an interval), which the run says. On the built-in shapes it cannot, and p stays below
    0.65 (near 0.5: a young G loses to D on any data at first, and p settles where D's
    certainty meets the target 0.6). Two tests, each one run, so that they run in parallel."""
    dataset = str(_textures(workdir / "images")) if data == "64 images" else "shapes"
    result = invoke("train", *DIRECTION, "--dataset", dataset, "--out", "r")
    assert result.exit_code == 0, result.output
    p = float(final_tensors(workdir / "r")[1]["loss.augment.p"])
    too_small = "the data is probably too small for this model" in result.stdout
    if data == "64 images":
        assert p > 0.8 and too_small, p
    else:
        assert p < 0.65 and not too_small, p


# ---- hostile state -----------------------------------------------------------------------------


def test_a_tiny_kimg_moves_p_to_its_bounds_never_to_nan():
    augment = make("ada:target=0,kimg=1e-300,interval=1")
    augment.rows(8, 0)
    for signs in ([1.0] * 8, [1.0] * 4 + [-1.0] * 4, [-1.0] * 8):  # up, r_t = target, down
        augment.observe(torch.tensor(signs))
        augment.deliver(lambda tensors: None)
        assert math.isfinite(float(augment.p))
    assert float(augment.p) == 0.0


def test_a_fixed_p_that_rounds_to_1_stays_below_it():
    assert float(make("ada:p=0.99999999999").p) < 1.0
    assert float(make("ada:start=0.999999999").p) < 1.0


@pytest.mark.parametrize("spec", ["ada:interval=1_0", "ada:interval=\u0663", "ada:kimg=1_000",
                                  "ada:interval=99999999999999999999"])
def test_numbers_are_plain_ascii_and_in_range(spec):
    with pytest.raises(ConfigError, match="^augment "):
        make(spec)


@pytest.mark.parametrize("value, says", [
    (torch.tensor(float("nan")), "loss.augment.p is nan: a probability from 0 to below 1"),
    (torch.tensor(5.0), "loss.augment.p is 5.0: a probability from 0 to below 1"),
    (torch.zeros(2, 3), "loss.augment.p holds 6 numbers"),
])
def test_a_damaged_p_is_refused_by_resume_and_init_from_in_one_line(workdir, value, says):
    from helpers import rewrite

    assert invoke("train", *TINY, "--steps", "2", "--augment", "ada", "--out", "r").exit_code == 0
    ckpt = workdir / "r" / "checkpoints" / "step-000000002.safetensors"
    rewrite(ckpt, ckpt, lambda tensors, meta: tensors.update({"loss.augment.p": value}))
    for args in (["resume", "r", "--steps", "4"],
                 ["train", *TINY, "--steps", "1", "--init-from", "r", "--augment", "ada",
                  "--out", "tuned"]):
        result = invoke(*args)
        assert result.exit_code == 1, result.output
        assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_curves_have_an_augmentation_panel():
    from ganctl.plot import Series

    series = Series()
    series.add([{"step": s, "loss_D": 1.0, "augment_p": s / 10, "augment_rt": 0.5, "img_per_s": 9.0}
                for s in (1, 2)])
    panels = {panel.title: sorted(panel.curves) for panel in series.panels()}
    assert panels["augmentation"] == ["p", "r_t"]


def test_tensorboard_and_wandb_get_p_and_r_t_under_augment():
    from ganctl.output.sinks import scalar_tags

    tags = scalar_tags({"step": 3, "time": 1.0, "loss_D": 1.0, "augment_p": 0.25, "augment_rt": 0.5})
    assert tags == {"loss/D": 1.0, "augment/p": 0.25, "augment/rt": 0.5}

"""The Python API (`import ganctl`): train, load, sample, grids, evaluate, and the README's example."""

from __future__ import annotations

import math
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, damage, read_json, signal_at, valid_steps, write_feature_net
from PIL import Image

import ganctl
from ganctl import api, rundir
from ganctl.config import Config
from ganctl.errors import CheckpointError, ConfigError, Stopped
from ganctl.models import build_generator
from ganctl.sample import latents_from_seeds, parse_seeds, sample_grid

# the tiny model of helpers.TINY, as keywords
TINY = {"batch_size": 8, "g_width": 8, "d_width": 8, "log_every": 2, "sample_every": 2,
        "ckpt_every": 2, "device": "cpu", "quiet": True}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def _run(tmp_path_factory: pytest.TempPathFactory) -> api.Run:
    """A 4-step unconditional run made through ganctl.train, every checkpoint kept."""
    return ganctl.train(**TINY, steps=4, keep=0, out=tmp_path_factory.mktemp("api") / "run")


@pytest.fixture
def run_dir(_run: api.Run, workdir: Path) -> Path:
    """A copy of that run at ./runs/0001-shapes-dcgan, the only run under ./runs."""
    return Path(shutil.copytree(_run.run_dir, workdir / "runs" / "0001-shapes-dcgan"))


@pytest.fixture(scope="module")
def G(_run: api.Run) -> api.Generator:
    return _run.load()


@pytest.fixture(scope="module")
def conditional(tmp_path_factory: pytest.TempPathFactory) -> api.Generator:
    """A 2-step class-conditional run on the shapes (circle, square, triangle)."""
    out = tmp_path_factory.mktemp("api") / "cond"
    return ganctl.train(**TINY, steps=2, conditional=True, out=out).load()


# --- the package --------------------------------------------------------------------------------

def test_import_ganctl_is_cheap_and_its_names_are_the_apis():
    code = "import sys, ganctl; assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (ganctl.train, ganctl.load, ganctl.Generator, ganctl.Run) == (
        api.train, api.load, api.Generator, api.Run)
    assert set(ganctl.__all__) <= set(dir(ganctl))
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        ganctl.trian  # noqa: B018


def test_ganctl_evaluate_is_the_function():
    assert ganctl.evaluate is api.evaluate


# --- train ----------------------------------------------------------------------------------------

def test_train_returns_the_run_and_its_checkpoint_loads(_run, G):
    ckpts = _run.run_dir / "checkpoints"
    assert (_run.step, _run.steps, _run.stopped) == (4, 4, None)
    assert _run.checkpoint == ckpts / "step-000000004.safetensors"
    assert _run.samples == _run.run_dir / "samples" / "step-000000004.png"
    assert _run.metrics == rundir.read_metrics(_run.run_dir)[-1] and _run.metrics["step"] == 4
    assert _run.result["checkpoint"] == str(_run.checkpoint) and _run.result["batch_size"] == 8
    assert valid_steps(_run.run_dir) == [2, 4]
    config = read_json(_run.run_dir / "config.json")
    assert (config["steps"], config["g_width"], config["dataset"]) == (4, 8, "shapes")
    assert (G.step, G.checkpoint, G.device, G.z_dim) == (4, _run.checkpoint, CPU, 100)
    assert G.config == Config.from_dict(config) and (G.num_classes, G.classes) == (0, ())
    assert not G.G.training


def test_unknown_settings_name_the_closest_one(workdir):
    with pytest.raises(ConfigError, match=r"unknown setting 'stpes' \(did you mean 'steps'\?\)"):
        ganctl.train(stpes=5)
    with pytest.raises(ConfigError, match=r"unknown setting 'output' \(did you mean 'out'\?\)"):
        ganctl.train(output="runs/x")
    with pytest.raises(ConfigError, match="exclude each other"):
        ganctl.train(out="r", resume=True, overwrite=True)
    with pytest.raises(ConfigError, match="need out="):
        ganctl.train(resume=True)
    with pytest.raises(ConfigError, match="steps must be a whole number from 1"):
        ganctl.train(steps=0)
    assert not (workdir / "runs").exists() and not (workdir / "r").exists()


def test_a_config_file_lies_under_the_keywords(workdir):
    (workdir / "run.toml").write_text("steps = 2\ng_width = 16\nd_width = 8\n")
    run = ganctl.train(**{**TINY, "g_width": None}, config=workdir / "run.toml", steps=1, out="r")
    assert run.step == 1  # the keyword's steps; g_width None is not given: the file's
    assert read_json(workdir / "r" / "config.json")["g_width"] == 16


def test_ctrl_c_checkpoints_and_resume_true_continues(workdir, monkeypatch, capsys):
    signal_at(monkeypatch, 3, signal.SIGINT)
    with pytest.raises(Stopped) as stopped:
        ganctl.train(**{**TINY, "ckpt_every": 1000}, steps=6, out="r")
    e = stopped.value
    assert e.exit_code == 130 and (e.result["step"], e.result["stopped"]) == (3, "SIGINT")
    assert str(e).endswith("continue with: ganctl resume r; from Python: "
                           "ganctl.train(out='r', resume=True)")
    assert valid_steps(workdir / "r") == [3]
    capsys.readouterr()
    run = ganctl.train(**{**TINY, "ckpt_every": 1000, "quiet": False}, steps=6, out="r",
                       resume=True)
    assert "resuming r from step-000000003.safetensors (step 3 of 6)" in capsys.readouterr().err
    assert (run.step, run.stopped) == (6, None) and valid_steps(workdir / "r") == [3, 6]


def test_training_in_another_thread_works(workdir):
    """A thread cannot install signal handlers; training goes on without them."""
    done: list[api.Run | BaseException] = []

    def train() -> None:
        try:
            done.append(ganctl.train(**TINY, steps=2, out=workdir / "t"))
        except BaseException as e:  # noqa: BLE001  (reported by the assertion below)
            done.append(e)

    thread = threading.Thread(target=train)
    thread.start()
    thread.join()
    assert isinstance(done[0], api.Run), done[0]
    assert ganctl.load(done[0].checkpoint).step == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # left as it was


# --- load -----------------------------------------------------------------------------------------

def test_load_finds_what_ganctl_sample_finds(run_dir, workdir):
    ckpts = run_dir / "checkpoints"
    newest = Path("runs/0001-shapes-dcgan/checkpoints/step-000000004.safetensors")
    assert ganctl.load().checkpoint == newest  # as found under ./runs
    assert ganctl.load("latest").step == 4 and ganctl.load(run_dir).step == 4
    assert ganctl.load(str(ckpts / "step-000000002.safetensors")).step == 2
    with pytest.raises(CheckpointError, match="has no best checkpoint"):
        ganctl.load("best")
    rundir.set_pointer(run_dir, rundir.BEST, ckpts / "step-000000002.safetensors")
    assert ganctl.load("best").step == 2 and ganctl.load(ckpts / "best").step == 2
    with pytest.raises(CheckpointError, match="does not exist"):
        ganctl.load(workdir / "nothing.safetensors")


def test_load_warns_of_a_damaged_checkpoint_it_passes_over(run_dir):
    damage(run_dir / "checkpoints" / "step-000000004.safetensors", "corrupted")
    with pytest.warns(UserWarning, match="skipping step-000000004.safetensors") as caught:
        G = ganctl.load(run_dir)
    assert G.step == 2 and caught[0].filename == __file__  # the warning points at the caller


# --- seeds ------------------------------------------------------------------------------------------

def test_parse_seeds():
    assert parse_seeds("0-3,100") == [0, 1, 2, 3, 100]
    assert parse_seeds(" 7 , 5-5,2-3 ") == [7, 5, 2, 3]
    assert parse_seeds(str(2**63 - 1)) == [2**63 - 1]


@pytest.mark.parametrize("text, what", [
    ("", "an empty part"), ("1,,2", "an empty part"), ("x", "'x' is not a seed"),
    ("-1", "'-1' is not a seed"), ("5-3", "range 5-3 runs backwards (write 3-5)"),
    ("1.5", "'1.5' is not a seed"), (str(2**63), f"seed {2**63} is past the largest"),
    ("0-100000", "more than 100000 seeds at once"), ("1-2-3", "'1-2-3' is not a seed"),
])
def test_bad_seeds_are_one_line_errors_with_an_example(text, what):
    with pytest.raises(ConfigError) as e:
        parse_seeds(text)
    message = str(e.value)
    assert message == f"seeds {text!r}: {what}" + message[len(f"seeds {text!r}: {what}"):]
    assert message.endswith("; write seeds like 0-63,100 (single seeds and ranges, comma-separated)")
    assert "\n" not in message


def test_seeds_in_every_form_give_the_same_images(G):
    x = G.sample(seeds="3-5")
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 32, 32) and x.device == CPU
    assert torch.equal(G.sample(seeds=range(3, 6)), x)
    assert torch.equal(G.sample(seeds=[3, np.int64(4), 5]), x)
    assert torch.equal(G.sample(seeds=5), x[2:])
    assert torch.equal(G.sample(n=6)[3:], x)
    assert torch.equal(G.sample(), G.sample(n=64))
    for bad, match in (([], "give one seed or more"), ([1.0], "seed 1.0 is not a whole number"),
                       ([-2], "seed -2 is not"), ("", "an empty part")):
        with pytest.raises(ConfigError, match=match):
            G.sample(seeds=bad)
    with pytest.raises(ConfigError, match="give seeds or n, not both"):
        G.sample(seeds=1, n=1)
    with pytest.raises(ConfigError, match="n must be a whole number from 1"):
        G.sample(n=0)


def test_an_image_is_byte_identical_whatever_its_batch(G):
    seeds = [11, 2, 30, 7, 5, 19, 1]
    x = G.sample(seeds=seeds)
    for batch_size in (1, 2, 3):
        assert torch.equal(G.sample(seeds=seeds, batch_size=batch_size), x)
    for i, s in enumerate(seeds):
        assert torch.equal(G.sample(seeds=s)[0], x[i])
    with pytest.raises(ConfigError, match="batch_size must be a whole number from 1"):
        G.sample(n=2, batch_size=0)


def test_untruncated_samples_are_the_grid_ganctl_sample_writes(G, tmp_path):
    """truncation=None keeps the latents every grid so far was drawn from."""
    sample_grid(rundir.locate(G.checkpoint, print), tmp_path / "cli.png", 10, 20, CPU)
    cli = np.asarray(Image.open(tmp_path / "cli.png"))
    assert np.array_equal(np.asarray(G.grid(seeds=range(20, 30))), cli)
    assert torch.equal(latents_from_seeds([4], 100)[0],
                       torch.randn(100, generator=torch.Generator().manual_seed(4)))


# --- truncation ------------------------------------------------------------------------------------------

def test_truncated_latents_stay_within_psi_and_shrink_with_it():
    z = {psi: latents_from_seeds(range(200), 100, psi) for psi in (2.0, 1.0, 0.5, 0.0)}
    for psi, latents in z.items():
        assert latents.dtype == torch.float32 and latents.abs().max() <= psi
    assert torch.equal(z[0.0], torch.zeros(200, 100))  # +0.0 everywhere: the same bytes
    assert (z[0.0].view(torch.int32) == 0).all()
    # each component keeps its sign and shrinks: one uniform draw through the inverse CDF
    assert torch.equal(z[2.0].sign(), z[0.5].sign()) and (z[0.5].abs() <= z[2.0].abs()).all()
    # N(0, 1) truncated to [-1, 1] has the variance 1 - 2 phi(1) / (2 Phi(1) - 1): std 0.5396
    assert z[1.0].std().item() == pytest.approx(0.5396, abs=0.005)
    assert torch.equal(latents_from_seeds([8, 9], 16, 0.7)[1], latents_from_seeds([9], 16, 0.7)[0])
    wide = latents_from_seeds(range(200), 100, 9.0)  # erf(9 / sqrt 2) is 1.0: a standard normal
    assert wide.isfinite().all() and wide.std().item() == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ConfigError, match="finite"):  # inf would reach JSON as Infinity
        latents_from_seeds([1], 100, math.inf)
    assert latents_from_seeds([3], 100, 40.0).abs().max() < 40  # erf(40 / sqrt 2) is 1.0


def test_truncation_narrows_the_samples_and_psi_0_is_one_image(G):
    def spread(psi: float | None) -> float:
        return G.sample(n=32, truncation=psi).float().std(dim=0).mean().item()  # per pixel

    spreads = [spread(psi) for psi in (None, 1.0, 0.5, 0.25)]
    assert spreads == sorted(spreads, reverse=True) and spreads[-1] < spreads[0] / 2
    x = G.sample(n=8, truncation=0)
    assert all(torch.equal(image, x[0]) for image in x) and spread(0.0) == 0.0
    for psi in (-0.5, math.nan, math.inf, "1", True):
        with pytest.raises(ConfigError, match="truncation must be a finite number from 0 up"):
            G.sample(n=2, truncation=psi)


# --- classes -----------------------------------------------------------------------------------------

def test_an_unconditional_model_takes_no_class(G):
    for class_ in (0, "circle"):
        with pytest.raises(ConfigError, match=f"class {class_!r} given, but this model is "
                           "unconditional"):
            G.sample(n=2, class_=class_)


def test_a_conditional_model_draws_a_class_by_index_or_name(conditional):
    G = conditional
    assert (G.num_classes, G.classes) == (3, ("circle", "square", "triangle"))
    by_name, by_index = G.sample(n=4, class_="square"), G.sample(n=4, class_=1)
    assert torch.equal(by_name, by_index)
    # by default seed s draws class s mod 3, every class in turn
    assert torch.equal(G.sample(n=6), torch.cat([G.sample(seeds=s, class_=s % 3) for s in range(6)]))
    assert not torch.equal(G.sample(seeds=4), G.sample(seeds=4, class_="circle"))
    # psi = 0: one image per class
    x = G.sample(seeds=range(6), truncation=0)
    assert torch.equal(x[0], x[3]) and not torch.equal(x[0], x[1])
    with pytest.raises(ConfigError, match=r"unknown class 'sqare' \(did you mean 'square'\?\); "
                       "this model's classes: 0 circle, 1 square, 2 triangle"):
        G.sample(n=1, class_="sqare")
    with pytest.raises(ConfigError, match="class 3 is not a class index from 0 to 2"):
        G.sample(n=1, class_=3)


# --- images and grids -------------------------------------------------------------------------------

def test_images_and_grids_are_pil_images_of_the_samples(G):
    x = G.sample(seeds="0-4")
    images = G.images(seeds="0-4")
    assert [(i.mode, i.size) for i in images] == [("RGB", (32, 32))] * 5
    assert all(np.array_equal(np.asarray(i), x[k].permute(1, 2, 0).numpy())
               for k, i in enumerate(images))
    grid = G.grid(seeds="0-4", nrow=2, padding=1)  # 2 per row, 3 rows
    assert (grid.mode, grid.size) == ("RGB", (2 * 33 + 1, 3 * 33 + 1))
    pixels = np.asarray(grid)
    assert np.array_equal(pixels[34:66, 34:66], np.asarray(images[3]))  # row 1, column 1
    assert (pixels[67:, 34:] == 0).all()  # the empty sixth cell
    assert G.grid(n=64).size == (274, 274) and G.grid(seeds=[1, 2, 3], nrow=5).size == (104, 36)
    with pytest.raises(ConfigError, match="nrow must be a whole number from 1"):
        G.grid(n=2, nrow=0)


def test_one_channel_images_are_mode_l():
    config = Config(channels=1, g_width=4, z_dim=8)
    G = api.Generator(build_generator(config).eval(), config, 0, Path("untrained"), CPU)
    images = G.images(n=2)
    assert [(i.mode, i.size) for i in images] == [("L", (32, 32))] * 2
    assert np.array_equal(np.asarray(images[1]), G.sample(seeds=1)[0, 0].numpy())
    assert G.grid(n=2).mode == "L"


# --- evaluate ------------------------------------------------------------------------------------------

def test_evaluate_scores_a_checkpoint_as_ganctl_eval_does(run_dir, tmp_path):
    net = write_feature_net(tmp_path / "fake.pt")
    doc = api.evaluate(run_dir, metrics="fid,kid", num=12, num_real=16, inception=net, quiet=True)
    assert (doc["step"], doc["num_fake"], doc["num_real"], doc["dataset"]) == (4, 12, 16, "shapes")
    assert set(doc["metrics"]) >= {"fid", "kid"} and doc["metrics"]["fid"] > 0
    logged = [r for r in rundir.read_metrics(run_dir) if r.get("event") == "eval"]
    assert logged[-1]["fid"] == doc["metrics"]["fid"] and logged[-1]["num_fake"] == 12
    again = api.evaluate("latest", metrics=["fid"], num=12, num_real=16, inception=net, quiet=True)
    assert again["metrics"]["fid"] == doc["metrics"]["fid"]  # the same fakes, the same reals
    for kwargs, match in (({"num": 1}, "num must be a whole number from 2"),
                          ({"metrics": "is"}, "unknown metric 'is'")):
        with pytest.raises(ConfigError, match=match):
            api.evaluate(run_dir, **kwargs)


# --- the README's example ---------------------------------------------------------------------------

def readme_example() -> str:
    """The ```python blocks of README.md's "From Python" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)
    assert blocks, "no python example in the From Python section"
    return "\n".join(blocks)


def test_the_readme_example_runs(workdir, capsys):
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    run, G, x = namespace["run"], namespace["G"], namespace["x"]
    ckpt = Path("runs/notebook/checkpoints/step-000000020.safetensors")
    assert capsys.readouterr().out == f"20 {ckpt}\n"  # what the comment beside print() says
    assert (run.step, run.checkpoint, G.checkpoint) == (20, ckpt, ckpt)
    assert Image.open(workdir / "grid.png").size == (8 * 34 + 2, 2 * 34 + 2)
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.uint8
    assert [i.size for i in namespace["images"]] == [(32, 32)] * 3
    assert np.array_equal(np.asarray(namespace["images"][2]),
                          G.sample(seeds=4)[0].permute(1, 2, 0).numpy())

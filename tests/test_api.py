"""The Python API (`import ganctl`): train, load, sample, grids, evaluate, and the README's example."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import CPU, ROOT, damage, invoke, read_json, signal_at, valid_steps, write_feature_net
from PIL import Image

import ganctl
from ganctl import api, rundir
from ganctl.api import files, generator, scores
from ganctl.config import Config
from ganctl.errors import CheckpointError, ConfigError, DeviceError, GanctlError, Stopped
from ganctl.models import build_generator
from ganctl.sample import TRUNCATION_NONE, LoadedGenerator, latents_from_seeds
from ganctl.seeds import parse_seeds

# the tiny model of helpers.TINY, as keywords
TINY = {"batch_size": 8, "g_width": 8, "d_width": 8, "log_every": 2, "sample_every": 2,
        "ckpt_every": 2, "device": "cpu", "quiet": True}


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
    assert all(getattr(ganctl, name) is getattr(api, name) for name in ganctl._API)
    assert ganctl.resume is api.resume
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


# --- load and train: what is not a path, and a run that is there ----------------------------------

def test_load_of_something_that_is_no_path_is_a_ganctl_error(workdir):
    import ganctl  # noqa: PLC0415
    from ganctl.errors import ConfigError  # noqa: PLC0415
    with pytest.raises(ConfigError, match="got int 5"):
        ganctl.load(5)


def test_the_api_says_how_to_continue_a_run_in_python_terms(workdir):
    import ganctl  # noqa: PLC0415
    from ganctl.errors import RunError  # noqa: PLC0415
    settings = {"steps": 2, "batch_size": 8, "g_width": 8, "d_width": 8, "device": "cpu",
                "quiet": True}
    ganctl.train(out="r", **settings)
    with pytest.raises(RunError, match=r"ganctl.train\(out='r', resume=True\), replace it with "
                                       r"overwrite=True"):
        ganctl.train(out="r", **settings)


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
    api.sample_to_file(G.checkpoint, tmp_path / "cli.png", range(20, 30), device="cpu")
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
    untrained = SimpleNamespace(step=0, path=Path("untrained"))  # a checkpoint's header, as read
    G = api.Generator(LoadedGenerator(build_generator(config).eval(), config, untrained), CPU)
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


# --- hostile arguments: a one-line GanctlError, never a bare Python or torch error ------------------

def one_line(e: pytest.ExceptionInfo, phrase: str) -> None:
    message = str(e.value)
    assert phrase in message and "\n" not in message, message
    assert not message.startswith("unexpected"), message


GENERATOR_MISTAKES = [
    ("sample", {"n": 2.5}, ConfigError, "n must be a whole number from 1 to 100,000"),
    ("sample", {"n": True}, ConfigError, "from 1 to 100,000 (the images, seeds 0..n-1), got True"),
    ("sample", {"n": 10**12}, ConfigError, "n must be a whole number from 1 to 100,000"),
    ("sample", {"n": "4"}, ConfigError, "from 1 to 100,000 (the images, seeds 0..n-1), got '4'"),
    ("sample", {"n": -1}, ConfigError, "n must be a whole number from 1"),
    ("sample", {"seeds": (s for s in range(3))}, ConfigError, "give one seed or more, like 7"),
    ("sample", {"seeds": {1: 2}}, ConfigError, "seeds {1: 2}: give one seed or more"),
    ("sample", {"seeds": {1, 2}}, ConfigError, "seeds {1, 2}: give one seed or more"),
    ("sample", {"seeds": 2.0}, ConfigError, "seeds 2.0: give one seed or more"),
    ("sample", {"seeds": [[1, 2]]}, ConfigError, "seed [1, 2] is not a whole number"),
    ("sample", {"seeds": b"0-3"}, ConfigError, "seeds b'0-3': give one seed or more"),
    ("sample", {"seeds": [True]}, ConfigError, "seed True is not a whole number"),
    ("sample", {"seeds": range(10**20)}, ConfigError, "more than 100000 seeds at once"),
    ("sample", {"seeds": np.array([[1, 2], [3, 4]])}, ConfigError, "seed array([1, 2]) is not"),
    ("sample", {"seeds": np.arange(2.0)}, ConfigError, "seed np.float64(0.0) is not a whole number"),
    ("sample", {"seeds": None, "n": None, "batch_size": 10**12}, ConfigError,
     "batch_size must be a whole number from 1 to 65,536, got 1000000000000"),
    ("sample", {"batch_size": 2.0}, ConfigError, "batch_size must be a whole number from 1"),
    ("sample", {"batch_size": None}, ConfigError, "batch_size must be a whole number from 1"),
    ("sample", {"truncation": math.nan}, ConfigError, "truncation must be a finite number from 0 up"),
    ("sample", {"truncation": -math.inf}, ConfigError, "truncation must be a finite number"),
    ("sample", {"truncation": "0.7"}, ConfigError, "truncation must be a finite number"),
    ("sample", {"truncation": 1j}, ConfigError, "truncation must be a finite number"),
    ("sample", {"class_": 1.0}, ConfigError, "class 1.0 given, but this model is unconditional"),
    ("sample", {"class_": [0]}, ConfigError, "class [0] given, but this model is unconditional"),
    ("images", {"n": 0}, ConfigError, "n must be a whole number from 1"),
    ("images", {"seeds": "0-1000000"}, ConfigError, "more than 100000 seeds at once"),
    ("grid", {"nrow": 0}, ConfigError, "nrow must be a whole number from 1 to 100,000, got 0"),
    ("grid", {"nrow": 1.5}, ConfigError, "nrow must be a whole number from 1 to 100,000, got 1.5"),
    ("grid", {"nrow": True}, ConfigError, "nrow must be a whole number from 1 to 100,000, got True"),
    ("grid", {"padding": -1}, ConfigError, "padding must be a whole number from 0 to 4,096, got -1"),
    ("grid", {"padding": None}, ConfigError, "padding must be a whole number from 0 to 4,096, got None"),
    ("grid", {"padding": 4096, "n": 400}, ConfigError, "GB of pixels, more than one image holds"),
    ("grid", {"padding": 4096, "n": 400, "truncation": math.inf}, ConfigError,
     "truncation must be a finite"),
]


@pytest.mark.parametrize("method, kwargs, error, phrase", GENERATOR_MISTAKES,
                         ids=[f"{m}-{'-'.join(k)}-{i}" for i, (m, k, _, _) in enumerate(GENERATOR_MISTAKES)])
def test_generator_mistakes_are_one_line_errors(G, method, kwargs, error, phrase, monkeypatch):
    monkeypatch.setattr(generator, "generate", lambda *a, **k: pytest.fail("generated despite a mistake"))
    with pytest.raises(error) as e:
        getattr(G, method)(**({"n": 2} | kwargs if "seeds" not in kwargs else kwargs))
    one_line(e, phrase)


@pytest.mark.parametrize("kwargs, error, phrase", [
    ({"class_": 1.5}, ConfigError, "class 1.5 is not a class index from 0 to 2 nor a class name"),
    ({"class_": True}, ConfigError, "class True is not a class index from 0 to 2"),
    ({"class_": -1}, ConfigError, "class -1 is not a class index from 0 to 2"),
    ({"class_": b"circle"}, ConfigError, "class b'circle' is not a class index"),
    ({"class_": "x" * 10_000}, ConfigError, "unknown class 'xxxx"),
])
def test_a_conditional_models_class_of_the_wrong_type_is_an_error(conditional, kwargs, error, phrase):
    with pytest.raises(error) as e:
        conditional.sample(n=2, **kwargs)
    one_line(e, phrase)
    assert len(str(e.value)) < 300  # a huge name is cut, not echoed whole


def test_numpy_and_torch_integers_and_a_huge_truncation_work(G, conditional):
    x = G.sample(seeds=[3, 4, 5], truncation=0.5)
    assert torch.equal(G.sample(seeds=np.arange(3, 6), truncation=np.float32(0.5)), x)
    assert torch.equal(G.sample(seeds=torch.arange(3, 6), truncation=0.5, batch_size=np.int32(2)), x)
    assert torch.equal(G.sample(seeds=np.int64(4), truncation=0.5), x[1:2])
    assert torch.equal(G.sample(n=np.int64(6), truncation=0.5)[3:], x)
    assert G.grid(n=np.int64(4), nrow=np.int64(1), padding=np.int64(0)).size == (32, 128)
    assert torch.equal(conditional.sample(n=2, class_=np.int64(1)), conditional.sample(n=2, class_=1))
    # from psi 8.3 up nothing is cut: 1e11, 1e300 and 10**400 (no float holds it) are psi 10
    cut_nothing = G.sample(n=3, truncation=TRUNCATION_NONE)
    for psi in (8.5, 1e11, 1e300, 10**400):
        assert torch.equal(G.sample(n=3, truncation=psi), cut_nothing)


def test_a_huge_integer_truncation_reaches_the_latents_as_psi_10():
    z = latents_from_seeds(range(50), 64, 10**400)  # float(10**400) was an OverflowError
    assert torch.equal(z, latents_from_seeds(range(50), 64, TRUNCATION_NONE))
    assert torch.equal(z, latents_from_seeds(range(50), 64, 8.5)) and z.abs().max() < 8.3


def test_more_pixels_than_one_call_returns_are_refused_before_generating(G, monkeypatch):
    monkeypatch.setattr(generator, "MAX_SAMPLE_BYTES", 10 * 3 * 32 * 32)  # ten 32x32 RGB images
    monkeypatch.setattr(generator, "generate", lambda *a, **k: pytest.fail("generated despite a mistake"))
    for draw in (G.sample, G.images, G.grid):
        with pytest.raises(ConfigError) as e:
            draw(n=11)
        one_line(e, "11 images at 32x32x3 are 0.0 GB of pixels, more than one call returns")


@pytest.mark.parametrize("call, error, phrase", [
    (lambda run: ganctl.load(3), ConfigError, "target must be a run directory, a checkpoint path"),
    (lambda run: ganctl.load(["runs"]), ConfigError, "got list ['runs']"),
    (lambda run: ganctl.load(bytes(run.run_dir)), ConfigError, "decode it with os.fsdecode"),
    (lambda run: ganctl.load(run.run_dir, device="gpu"), DeviceError, "unknown device 'gpu'"),
    (lambda run: ganctl.load(run.run_dir, device=3), DeviceError, "unknown device int 3; use auto, cpu"),
    (lambda run: ganctl.load(run.run_dir, device=None), DeviceError, "unknown device None"),
    (lambda run: run.load(device="gpu"), DeviceError, "unknown device 'gpu'"),
    (lambda run: run.load(device=0), DeviceError, "unknown device int 0"),
    (lambda run: ganctl.evaluate(run.run_dir, metrics=["fid", 3]), ConfigError,
     "metric 3 is not a metric's name; choose from fid, kid, pr"),
    (lambda run: ganctl.evaluate(run.run_dir, metrics=None), ConfigError,
     "metrics must be names like 'fid,kid' or ['fid', 'kid'], got None"),
    (lambda run: ganctl.evaluate(run.run_dir, metrics=b"fid"), ConfigError, "got bytes b'fid'"),
    (lambda run: ganctl.evaluate(run.run_dir, metrics=[]), ConfigError, "no metric given"),
    (lambda run: ganctl.evaluate(run.run_dir, metrics=("fid", "xx")), ConfigError, "unknown metric 'xx'"),
    (lambda run: ganctl.evaluate(run.run_dir, num=2.5), ConfigError,
     "num must be a whole number from 2 to 10,000,000, got 2.5"),
    (lambda run: ganctl.evaluate(run.run_dir, num=10**12), ConfigError, "num must be a whole number"),
    (lambda run: ganctl.evaluate(run.run_dir, num_real=1), ConfigError, "num_real must be a whole number"),
    (lambda run: ganctl.evaluate(run.run_dir, dataset=3), ConfigError, "dataset must be a dataset's name"),
    (lambda run: ganctl.evaluate(run.run_dir, split=3), ConfigError, "split must be a split's name"),
    (lambda run: ganctl.evaluate(run.run_dir, data_dir=3), ConfigError, "data_dir must be the folder"),
    (lambda run: ganctl.evaluate(run.run_dir, inception=b"net.pt"), ConfigError,
     "inception must be the feature network's file (a str or pathlib.Path), got bytes"),
    (lambda run: ganctl.evaluate(run.run_dir, device="gpu"), DeviceError, "unknown device 'gpu'"),
    (lambda run: ganctl.evaluate(run.run_dir, device=3), DeviceError, "unknown device int 3"),
    (lambda run: ganctl.evaluate(run.run_dir, quiet="yes"), ConfigError,
     "quiet must be True or False, got str 'yes'"),
    (lambda run: ganctl.evaluate(run.run_dir, download=None), ConfigError,
     "download must be True or False, got None"),
], ids=lambda v: "" if callable(v) or isinstance(v, type) else v[:40])
def test_load_and_evaluate_mistakes_are_one_line_errors(_run, call, error, phrase, monkeypatch):
    monkeypatch.setattr(scores, "evaluate_checkpoint", lambda *a: pytest.fail("scored despite a mistake"))
    with pytest.raises(error) as e:
        call(_run)
    one_line(e, phrase)


def test_a_torch_device_is_a_device(_run):
    assert ganctl.load(_run.run_dir, device=torch.device("cpu")).device == CPU


@pytest.mark.parametrize("kwargs, phrase", [
    ({"steps": "10"}, "steps must be an integer, got '10'"),
    ({"steps": np.int64(0)}, "steps must be a whole number from 1"),  # numpy's: judged as an int
    ({"out": 3}, "out must be a run directory's path (a str or pathlib.Path), got int 3"),
    ({"out": b"r"}, "decode it with os.fsdecode"),
    ({"config": 5}, "config must be the path of a TOML or JSON config file"),
    ({"max_time": 5}, "max_time must be a duration like '3h30m', '90m' or '45s' (a string), got int 5"),
    ({"max_time": "soon"}, "--max-time 'soon' is not a duration like 3h30m"),
    ({"quiet": "yes"}, "quiet must be True or False, got str 'yes'"),
    ({"download": None}, "download must be True or False, got None"),
    ({"resume": "no", "out": "r"}, "resume must be True or False, got str 'no'"),
    ({"overwrite": 1, "out": "r"}, "overwrite must be True or False, got int 1"),
    ({"device": "gpu"}, "device 'gpu' is not one of auto, cpu, cuda, cuda:K, mps"),
    ({"device": 3}, "device must be a string"),
    ({"batch_size": 10**12}, "batch_size must be a whole number from 1 to 65536"),
    ({"stpes": 1}, "unknown setting 'stpes'"),
    ({"gpus": 2}, "train() has no gpus=: several processes are started by the command line "
                  "(ganctl train --gpus N"),  # not "did you mean 'gp'"
    ({"json": True}, "train() has no json=: train() returns a Run"),
], ids=lambda v: "-".join(v) if isinstance(v, dict) else "")
def test_train_mistakes_are_one_line_errors_before_any_run(workdir, kwargs, phrase):
    with pytest.raises(GanctlError) as e:
        ganctl.train(**{**TINY, "steps": 1, **kwargs})
    one_line(e, phrase)
    assert not (workdir / "runs").exists() and not (workdir / "r").exists()


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


class BytesPath(os.PathLike):
    """A path-like object whose path is bytes (pathlib refuses it with a TypeError)."""

    def __fspath__(self):
        return b"r"


@pytest.mark.parametrize("call, phrase", [
    (lambda run, G: G.grid(n=2, padding=10**400), "padding must be a whole number from 0 to 4,096"),
    (lambda run, G: ganctl.load("x" * 300), "File name too long"),  # the OS's error, as ganctl's
    (lambda run, G: ganctl.train(dataset="x" * 300, steps=1, quiet=True), "File name too long"),
    (lambda run, G: ganctl.load(BytesPath()), "decode it with os.fsdecode"),
    (lambda run, G: ganctl.evaluate(BytesPath(), quiet=True), "decode it with os.fsdecode"),
    (lambda run, G: ganctl.train(config="\x00", quiet=True), "config '\\x00' holds a NUL character"),
    (lambda run, G: ganctl.load("a\nb"), "a\\nb does not exist"),  # one line
    (lambda run, G: G.sample("x" * 5000), "... (5002 characters)"),  # cut short
], ids=range(8))
def test_what_the_os_refuses_and_long_or_odd_values_are_one_short_line(_run, G, workdir, call, phrase):
    with pytest.raises(GanctlError) as e:
        call(_run, G)
    one_line(e, phrase)
    assert len(str(e.value)) <= 1000


def test_the_commands_functions_check_what_they_are_given(run, monkeypatch):
    """Every mistake is ganctl's own error, before a file is written: an unknown keyword (with
    the closest one), a None, empty or unnameable output path, a callback that cannot be called,
    names that are not a list; numpy's integers count as ints."""
    monkeypatch.setenv("GANCTL_CACHE_DIR", str(Path("cache").absolute()))
    cases = [(lambda: api.sample_to_file("r", None, n=4), "out must be a file's path"),
             (lambda: api.sample_to_file("r", "\ud800.png", n=4), "holds a lone surrogate"),
             (lambda: api.sample_to_file("r", "", n=4), "out is an empty path"),
             (lambda: api.sample_to_file("r", "q.png", n=4, foo=1),
              "sample_to_file(): got an unexpected keyword argument 'foo'"),
             (lambda: api.load("r", devise="cpu"), "did you mean 'device'?"),
             (lambda: api.sample_to_file(None, "q.png", notes=5), "notes must be a function"),
             (lambda: api.export_images("r", "eo", n=4, progress=5), "progress must be a function"),
             (lambda: api.export_images("r", "eo", n=4, format="bmp"),
              "'bmp' is not one of png, jpg, webp, npz"),
             (lambda: api.sample_to_file("r", "q.txt", n=4), "q.txt: the image's name must end in"),
             (lambda: api.caches(None, "imgs"), "names must be a list"),
             (lambda: api.remove_caches("imgs"), "entries must be a list"),
             (lambda: api.runs("nowhere"), "nowhere does not exist")]
    for call, phrase in cases:
        with pytest.raises(ConfigError, match=re.escape(phrase)):
            call()
    assert not {"q.png", "q.txt", "eo"} & set(os.listdir("."))
    walk = api.interpolate("r", "w.gif", seeds="0-2", frames=np.int64(6), device="cpu")
    assert walk["frames"] == 6 and Path("w.gif").is_file()
    assert len(generator.chosen_seeds(None, 150_000, limit=files.MAX_EXPORT)) == 150_000
    every_class = api.sample_to_file("r", "one.png", class_=None)  # unconditional: 64 seeds
    assert every_class["n"] == 64


def test_a_grid_of_every_class_is_the_commands_grid(conditional, tmp_path):
    """class_="all" draws a row of 8 seeds for each class, from the API as from `ganctl sample
    --class all`, to the byte."""
    r = api.sample_to_file(conditional.checkpoint, tmp_path / "api.png", class_="all", device="cpu")
    assert (r["n"], r["width"], r["height"]) == (24, 274, 104)
    result = invoke("sample", "--class", "all", tmp_path / "cli.png", "--ckpt", conditional.checkpoint)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli.png").read_bytes() == (tmp_path / "api.png").read_bytes()

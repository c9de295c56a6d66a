"""The files in examples/ are valid and the shell script runs as a user would run it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ganctl.config import load_config_file
from ganctl.train import resolve_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_example_configs_are_valid(name):
    values = load_config_file(EXAMPLES / name)
    config = resolve_config({**values, "dataset": "shapes"})  # the model part, on built-in data
    assert config.resolution == values.get("resolution", 32)


def test_celeba_example_is_the_article_setup():
    values = load_config_file(EXAMPLES / "celeba_dcgan64.toml")
    assert (values["dataset"], values["resolution"], values["z_dim"], values["lr_g"]) == (
        "celeba", 64, 100, 2e-4)


def test_train_and_sample_script(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = tmp_path / "run"
    proc = subprocess.run(
        ["bash", str(EXAMPLES / "train_and_sample.sh"), str(EXAMPLES / "shapes_quick.toml"),
         str(run), "--steps", "3", "--batch-size", "8", "--device", "cpu"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(run / "grid.png").size == (274, 274)
    assert (run / "inspect.json").read_text().startswith("{")
    failed = subprocess.run(
        ["bash", str(EXAMPLES / "train_and_sample.sh"), str(EXAMPLES / "shapes_quick.toml"),
         str(run)], env=env, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1  # the run exists: train refuses, the script stops there
    assert "already holds a run" in failed.stderr
    assert "training failed with exit code 1" in failed.stderr

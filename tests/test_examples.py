"""The files in examples/ are valid and the shell script runs as a user would run it."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ganctl.configfile import load_config_file
from ganctl.settings import resolve_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_example_configs_are_valid(name):
    values = load_config_file(EXAMPLES / name)
    config = resolve_config({**values, "dataset": "shapes"})  # the model part, on built-in data
    assert config.resolution == values.get("resolution", 32)


def test_train_and_sample_script(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = tmp_path / "run"
    proc = subprocess.run(
        ["bash", str(EXAMPLES / "train_and_sample.sh"), str(EXAMPLES / "shapes_quick.toml"),
         str(run), "--steps", "2", "--batch-size", "8", "--device", "cpu", "--no-curves"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(run / "grid.png").size == (274, 274)
    assert (run / "inspect.json").read_text().startswith("{")


def test_train_and_sample_script_stops_at_a_failed_train(tmp_path):
    fake = tmp_path / "bin" / "ganctl"  # train fails the way ganctl fails: exit 1, one line
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\necho "error: r already holds a run" >&2\n'
                    '[ "$1" = train ] && exit 1\necho sampled > "$SAMPLED"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
           "SAMPLED": str(tmp_path / "sampled")}
    failed = subprocess.run(["bash", str(EXAMPLES / "train_and_sample.sh"), "c.toml", "r"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1  # train refuses, the script stops there
    assert "already holds a run" in failed.stderr
    assert "training failed with exit code 1" in failed.stderr
    assert not (tmp_path / "sampled").exists()

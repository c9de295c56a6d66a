"""The config: typed, frozen, validated; layered defaults < preset < file < flags."""

import dataclasses
import json

import pytest
from helpers import TINY, assert_one_line_error, invoke, read_json

from ganctl.config import Config, load_config_file
from ganctl.errors import ConfigError
from ganctl.session import resolve_config


def test_config_is_frozen_and_validated():
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 5
    with pytest.raises(ConfigError, match="steps must be a whole number from 1 to 999999999, got 0"):
        Config(steps=0)
    with pytest.raises(ConfigError, match="d_steps must be a whole number from 1 to 100, got 0"):
        Config(d_steps=0)
    with pytest.raises(ConfigError, match="d_steps must be a whole number from 1 to 100, got 1000000"):
        Config(d_steps=10**6)
    with pytest.raises(ConfigError, match="batch_size must be an integer"):
        Config(batch_size=True)
    with pytest.raises(ConfigError, match="beta1 must be in"):
        Config(beta1=1.0)
    with pytest.raises(ConfigError, match="classes must be a list of strings"):
        Config(classes=[1, 2])
    assert Config(ema_decay=0).ema_decay == 0.0 and isinstance(Config(lr_g=1).lr_g, float)
    assert Config.from_dict(json.loads(config.to_json())) == config
    labelled = Config(classes=["cat", "dog"])  # as JSON gives it back: a list
    assert labelled.classes == ("cat", "dog")
    assert Config.from_dict(json.loads(labelled.to_json())) == labelled


def test_resolve_config_layers_preset_under_values():
    config = resolve_config({"steps": 7})
    assert (config.steps, config.resolution, config.g_width) == (7, 32, 32)  # shapes preset
    assert resolve_config({"g_width": 64}).g_width == 64


def test_json_config_file(tmp_path):
    (tmp_path / "c.json").write_text('{"steps": 3, "z-dim": 8}')
    assert load_config_file(tmp_path / "c.json") == {"steps": 3, "z_dim": 8}


def test_config_file_then_flags_take_precedence(workdir):
    (workdir / "c.toml").write_text(
        'steps = 2\nbatch-size = 8\ng_width = 8\nd_width = 8\nz_dim = 16\nseed = 3\n'
        'ema_decay = 0.9\ndevice = "cpu"\nlog_every = 2\n')
    result = invoke("train", "--config", "c.toml", "--steps", "1", "--seed", "5", "--out", "r")
    assert result.exit_code == 0, result.output
    config = read_json(workdir / "r" / "config.json")
    assert config["steps"] == 1 and config["seed"] == 5  # flags beat the file
    assert config["z_dim"] == 16 and config["batch_size"] == 8  # the file beats the defaults
    assert config["ema_decay"] == 0.9 and config["beta1"] == 0.5  # untouched defaults remain
    assert config["resolution"] == 32 and config["lr_g"] == 5e-4  # the dataset preset's


@pytest.mark.parametrize("text, fragment", [
    ("steps = [", "is not valid TOML"),
    ("stepz = 4", "unknown config key 'stepz'"),
    ("steps = 'four'", "steps must be an integer"),
    ("[train]\nsteps = 4", "train is a table; write flat `key = value` lines"),
    ("steps = 4\nd-steps = 2\nd_steps = 3", "gives d_steps twice"),
    ("dataset = 5", "dataset must be a string, got 5"),
    (f"seed = {2**40}", "seed must be a whole number from 0 to 4294967295"),
    ('classes = ["a"]', "the config names the classes a, but dataset 'shapes' has circle, square"),
])
def test_bad_config_file(workdir, text, fragment):
    (workdir / "c.toml").write_text(text)
    assert_one_line_error(invoke("train", "--config", "c.toml"), 1, fragment)
    assert not (workdir / "runs").exists()


def test_a_runs_own_config_json_starts_another_run(trained_run, workdir):
    result = invoke("train", "--config", trained_run / "config.json", "--steps", "1", "--out", "again")
    assert result.exit_code == 0, result.output
    assert read_json(workdir / "again" / "config.json") == {**read_json(trained_run / "config.json"),
                                                           "steps": 1}
    (workdir / "c.toml").write_text('classes = ["a"]\n')  # a run keeps the classes it started with
    result = invoke("train", *TINY, "--config", "c.toml", "--out", trained_run, "--resume")
    assert_one_line_error(result, 1, "was started with classes = ('circle', 'square', 'triangle')")

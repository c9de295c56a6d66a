"""The config: typed, frozen, validated, every bound enforced; layered defaults < preset < file <
flags, with notes on settings that change nothing and one spelling stored."""

import copy
import dataclasses
import datetime
import json
import math
import pickle
import re

import pytest
from helpers import TINY, assert_one_line_error, invoke, read_json

from ganctl.config import BOUNDS, FIELD_NAMES, FIELD_TYPES, Config
from ganctl.configfile import load_config_file
from ganctl.errors import ConfigError
from ganctl.settings import resolve_config


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


def test_every_numeric_bound_is_enforced_for_files_too():
    for name, (low, high) in BOUNDS.items():
        kind = type(getattr(Config(), name))
        for bad in (high * 2 + 1, low - 1 if name != "batch_size" else -1):  # 0: auto
            with pytest.raises(ConfigError, match=name):
                Config(**{name: kind(bad)})
        Config(**{name: kind(high)})  # the bound itself is allowed


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


# --- every key against every type a TOML or JSON file can hold (issue 22) -------------------------

# Values of each TOML and JSON type, as the file spells them and as Python holds them.
TOML_VALUES = {"integer": ("7", 7), "float": ("0.5", 0.5), "boolean": ("true", True),
               "string": ('"x"', "x"), "array": ("[1, 2]", [1, 2]), "table": ("{ a = 1 }", {"a": 1}),
               "date-time": ("1979-05-27T07:32:00Z", datetime.datetime(1979, 5, 27, 7, 32,
                                                                      tzinfo=datetime.UTC)),
               "local date": ("1979-05-27", datetime.date(1979, 5, 27)),
               "local time": ("07:32:00", datetime.time(7, 32))}
JSON_VALUES = {"null": ("null", None), "integer": ("7", 7), "float": ("0.5", 0.5),
               "boolean": ("true", True), "string": ('"x"', "x"), "array": ("[1, 2]", [1, 2]),
               "object": ('{"a": 1}', {"a": 1})}
# right-typed numbers no field takes: NaN, infinities, a number of 30 digits
TOML_EXTREMES = ["nan", "inf", "-inf", "123456789012345678901234567890"]
JSON_EXTREMES = ["NaN", "-Infinity", "1e999", "123456789012345678901234567890"]
KINDS = dict(FIELD_TYPES)


def _accepted(key: str, value: object) -> bool:
    """Whether a file or a call may give `key` this value's type (the value may still be out of
    range): ints for floats, true/false for compile and spectral_norm, a list of names for classes."""
    kind = KINDS[key]
    if isinstance(value, bool):
        return kind == "bool" or key in ("compile", "spectral_norm")
    if kind == "tuple[str, ...]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, {"int": int, "float": (int, float), "str": str, "bool": bool}[kind])


def _wrong(key: str, values: dict[str, tuple[str, object]]) -> list[str]:
    return [text for text, value in values.values() if not _accepted(key, value)]


def _assert_names(message: str, key: str, *fragments: str) -> None:
    assert len(message.splitlines()) == 1 and "unexpected" not in message, message
    assert re.search(rf"\b{key}\b", message), message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("key", KINDS)
def test_every_key_refuses_every_wrong_type_in_a_file(tmp_path, key):
    """load_config_file (what --config reads) names the key, the file and the type it wants."""
    for suffix, values, line in ((".toml", TOML_VALUES, "{key} = {text}"),
                                 (".json", JSON_VALUES, '{{"{key}": {text}}}')):
        for text in _wrong(key, values):
            path = tmp_path / f"c{suffix}"
            path.write_text(line.format(key=key, text=text))
            with pytest.raises(ConfigError) as caught:
                load_config_file(path)
            _assert_names(str(caught.value), key, f"config file {path}: {key} must be")


@pytest.mark.parametrize("key", KINDS)
def test_every_key_refuses_every_wrong_type_through_the_api(workdir, key):
    import ganctl

    wrong = [value for _, value in TOML_VALUES.values() if not _accepted(key, value)]
    for value in wrong:
        with pytest.raises(ConfigError) as caught:
            ganctl.train(**{key: value}, quiet=True)
        _assert_names(str(caught.value), key, f"{key} must be")
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize("key", [k for k, kind in KINDS.items() if kind in ("int", "float")])
def test_every_number_refuses_nan_infinities_and_huge_values(workdir, key):
    import ganctl

    for value in (math.nan, math.inf, -math.inf, 10**30, 10**400, -(10**5000)):
        with pytest.raises(ConfigError) as caught:
            ganctl.train(**{key: value}, quiet=True)
        _assert_names(str(caught.value), key)
        assert len(str(caught.value)) < 400, str(caught.value)
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize("index, key", list(enumerate(KINDS)))
def test_the_command_line_says_which_key_file_and_type_in_one_line(workdir, index, key):
    """Through `train --config F --print-config`, one wrong value of each file type per key (the
    values take turns across the keys, so every type is seen); numbers also get an extreme."""
    for suffix, values, extremes, line in (
            (".toml", TOML_VALUES, TOML_EXTREMES, "{key} = {text}"),
            (".json", JSON_VALUES, JSON_EXTREMES, '{{"{key}": {text}}}')):
        wrong = _wrong(key, values)
        path = workdir / f"c{suffix}"
        path.write_text(line.format(key=key, text=wrong[index % len(wrong)]))
        result = invoke("train", "--config", path, "--print-config")
        assert_one_line_error(result, 1, f"config file {path}: {key} must be")
        _assert_names(result.stderr.strip(), key)
        if KINDS[key] in ("int", "float"):
            path.write_text(line.format(key=key, text=extremes[index % len(extremes)]))
            result = invoke("train", "--config", path, "--print-config")
            assert_one_line_error(result, 1)
            _assert_names(result.stderr.strip(), key)
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize("text, fragment", [
    ("init_from = 7", "config file c.toml: init_from must be a string, got 7"),
    ('preset = ["a"]', "config file c.toml: preset must be a string, got ['a']"),
    ("compile_mode = 1979-05-27", "compile_mode must be a string, got 1979-05-27 (a date)"),
    ('batch_size = "lots"', 'batch_size must be an integer or "auto", got \'lots\''),
    ("compile = 1", "compile must be a string (auto, on, off) or true/false, got 1"),
    ("lr_g = " + "9" * 400, "lr_g must be a number a float can hold"),
    ("steps = " + "9" * 5000, "config file c.toml is not valid TOML: Exceeds the limit"),
    ('dataset = "a\\u0000b"', "dataset must be a string without NUL characters"),
    ('classes = ["a", "b\\u0000"]', "classes must be a string without NUL characters"),
    ('data_dir = "~no_such_user_here/x"', "data_dir '~no_such_user_here/x' starts with a ~"),
])
def test_wrong_values_in_a_file_read_as_the_user_wrote_them(workdir, text, fragment):
    (workdir / "c.toml").write_text(text)
    assert_one_line_error(invoke("train", "--config", "c.toml", "--print-config"), 1, fragment)


def test_accepted_spellings_stay_accepted(workdir):
    (workdir / "c.toml").write_text('batch_size = " Auto "\ncompile = false\nspectral_norm = true\n'
                                    'lr_g = 1\nclasses = []\nprecision = "FP32"\n')
    result = invoke("train", "--config", "c.toml", "--print-config", "--json")
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)["config"]
    assert (config["batch_size"], config["compile"], config["spectral_norm"]) == (0, "off", "on")
    assert config["lr_g"] == 1.0 and isinstance(config["lr_g"], float)
    assert config["precision"] == "fp32"


STRING_KEYS = [key for key, kind in KINDS.items() if kind in ("str", "tuple[str, ...]")]


def _with_text(key: str, text: str) -> object:
    return [text] if KINDS[key] == "tuple[str, ...]" else text


@pytest.mark.parametrize("key", STRING_KEYS)
def test_every_string_refuses_a_lone_surrogate_from_a_file_and_a_call(workdir, key):
    """JSON's "\\ud800" is no character: no file name or output can hold it. Refused naming the
    key, in one line, before anything (a path lookup, a print) meets it."""
    path = workdir / "c.json"
    path.write_text(json.dumps({key: _with_text(key, "x\ud800")}))  # json writes it escaped
    result = invoke("train", "--config", path, "--print-config")
    assert_one_line_error(result, 1, f"config file {path}: {key} must be text", "\\ud800",
                          "lone surrogate")
    assert "unexpected" not in result.stderr
    import ganctl

    with pytest.raises(ConfigError) as caught:
        ganctl.train(**{key: _with_text(key, "\udfff")}, quiet=True)
    _assert_names(str(caught.value), key, "must be text", "\\udfff")
    with pytest.raises(ConfigError, match=f"^{key} must be text"):
        Config(**{key: _with_text(key, "\ud800")})  # type: ignore[arg-type]
    assert not (workdir / "runs").exists()


def test_a_flag_that_is_not_text_is_refused_in_one_line(workdir):
    """A byte that is not UTF-8 on the command line reaches Python as a surrogate escape
    (\\udcff): no W&B project name, augmentation or other plain setting is made of it."""
    for flag, key in (("--wandb-project", "wandb_project"), ("--augment", "augment")):
        result = invoke("train", flag, "run\udcff", "--print-config")
        assert_one_line_error(result, 1, f"{key} must be text", "\\udcff")
        assert "unexpected" not in result.stderr


def test_a_folder_whose_name_is_not_utf8_stays_a_dataset(workdir):
    """Path keys (and class names, which are folder names) may carry the bytes of a file name
    that is not UTF-8, as Python reads them (surrogate escapes U+DC80..U+DCFF)."""
    import os

    from helpers import image_folder

    folder = workdir / os.fsdecode(b"img\xff")
    for name in (b"b", b"cl\xe9"):
        image_folder(folder / os.fsdecode(name), 2, size=(8, 8))
    result = invoke("train", "--dataset", folder, "--print-config", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["config"]["dataset"] == str(folder)
    for _ in range(2):  # decoded, then read from its cache: the class name survives the .json
        result = invoke("data", "info", "--dataset", folder, "--json")
        assert result.exit_code == 0 and "damaged" not in result.stderr, result.output
        assert json.loads(result.stdout)["classes"] == ["b", "cl\udce9"]
    assert Config(dataset=str(folder), classes=(os.fsdecode(b"cl\xe9"),)).classes == ("cl\udce9",)


@pytest.mark.parametrize("text, key", [
    ('{"steps": 5, "steps": 7}', "'steps'"),
    ('{"seed": 1, "steps": 5, "seed": 1}', "'seed'"),  # twice even with the same value
    ('{"dataset": "shapes", "classes": ["a"], "classes": []}', "'classes'"),
])
def test_a_json_key_given_twice_is_refused_not_the_last_one_taken(workdir, text, key):
    """As TOML and checkpoint headers refuse a key given twice, so does a JSON config: the
    last one winning silently would run another config than the user thinks they wrote."""
    (workdir / "c.json").write_text(text)
    result = invoke("train", "--config", "c.json", "--print-config")
    assert_one_line_error(result, 1, f"config file c.json gives {key} twice; keep one")
    assert "unexpected" not in result.stderr
    with pytest.raises(ConfigError, match="gives .* twice"):
        load_config_file(workdir / "c.json")


# --- what the user is told of settings, and their spellings ---------------------------------------

def test_settings_that_change_nothing_are_pointed_out(workdir):
    result = invoke("train", *TINY, "--steps", "1", "--gp", "5", "--r1-every", "4",
                    "--augment", "none", "--eval-num", "50", "--eval-metrics", "kid", "--out", "r")
    assert result.exit_code == 0, result.output
    assert "--gp is the weight of wgan-gp's penalty; with --loss bce it does nothing" in result.stdout
    assert "without --r1 or --r2 it does nothing" in result.stdout
    assert ("--eval-num, --eval-metrics are for the evaluations during training; without "
            "--eval-every N they do nothing") in result.stdout
    assert read_json(workdir / "r" / "config.json")["augment"] == ""  # none is stored as off
    result = invoke("train", *TINY, "--steps", "1", "--loss", "wgan-gp", "--gp", "5", "--r1",
                    "1", "--r1-every", "4", "--out", "r2")
    assert result.exit_code == 0 and "does nothing" not in result.stdout


def test_augment_is_stored_in_one_spelling():
    from ganctl.settings import resolve_config
    assert resolve_config({"augment": "DiffAug: color, cutout"}).augment == "diffaug:color,cutout"
    assert resolve_config({"augment": " NONE "}).augment == resolve_config({}).augment == ""


def test_a_config_is_groups_read_flat_and_made_once():
    """Each setting lives in one frozen group (config.objective.lr_g is config.lr_g), the flat
    keys are the file's, and a made Config stays as it was made."""
    config = Config(steps=7, lr_g=1e-3)
    assert (config.schedule.steps, config.objective.lr_g, config.data.dataset) == (7, 1e-3, "shapes")
    assert list(config.to_dict()) == list(FIELD_NAMES) and config.to_dict()["steps"] == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        del config.schedule
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.__init__(steps=9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.schedule.steps = 9
    assert config.steps == 7 and config.replace(steps=9).steps == 9 and config.steps == 7
    assert pickle.loads(pickle.dumps(config)) == config == copy.deepcopy(config)
    assert hash(config) == hash(Config(steps=7, lr_g=1e-3)) and config != Config(steps=8)
    with pytest.raises(ConfigError, match="unknown config key 'stpes' in Config\\(\\).*steps"):
        Config(stpes=1)
    with pytest.raises(AttributeError, match="Config has no setting 'stpes'"):
        _ = config.stpes
    with pytest.raises(ConfigError, match='^batch_size must be an integer, got \'auto\'$'):
        Config(batch_size="auto")  # (the spelling "auto" is the layers', settings.normalise)

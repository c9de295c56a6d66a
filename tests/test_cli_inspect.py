"""`ganctl inspect`: a checkpoint's header as a table and as strict JSON, its dates and class
names, and the user's strings in it shown as text, never sent to the terminal."""

from __future__ import annotations

import json
import os
import re

import pytest
from helpers import TINY, _config_edit, _forge, assert_one_line_error, image_folder, invoke, rewrite

from ganctl.config import Config
from ganctl.models import build_models


def test_inspect_json_reports_the_header(trained_run, workdir):
    result = invoke("inspect", trained_run, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    config = json.loads((trained_run / "config.json").read_text())
    assert info["step"] == 4 and info["config"] == config
    assert info["file_size"] == os.path.getsize(ckpt)
    assert info["version"] == __import__("ganctl").__version__ and info["schema"] == 4
    G, D = build_models(Config.from_dict(config))
    assert info["params"] == {"G": sum(p.numel() for p in G.parameters()),
                              "D": sum(p.numel() for p in D.parameters())}
    last = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert info["metrics"] == last
    assert info["created"].endswith("+00:00")


def test_inspect_table_and_default_target(trained_run):
    result = invoke("inspect")
    assert result.exit_code == 0, result.output
    for text in ("step", "params", "loss_D", "dcgan", "step-000000004.safetensors"):
        assert text in result.stdout


def test_inspect_an_older_checkpoint_file(trained_run):
    result = invoke("inspect", trained_run / "checkpoints" / "step-000000002.safetensors",
                    "--json")
    assert json.loads(result.stdout)["step"] == 2


def test_inspect_shows_class_names(workdir):
    image_folder(workdir / "imgs", 8, classes=2)
    assert invoke("train", *TINY, "--steps", "1", "--dataset", "imgs", "--resolution", "32",
                  "--out", "r").exit_code == 0
    result = invoke("inspect", "r")
    assert result.exit_code == 0 and "c0, c1" in result.stdout
    assert json.loads(invoke("inspect", "r", "--json").stdout)["config"]["classes"] == ["c0", "c1"]


def test_inspect_shows_times_as_dates(workdir):
    assert invoke("train", *TINY, "--out", "r").exit_code == 0
    result = invoke("inspect", "r")
    assert result.exit_code == 0, result.output
    created = re.search(r"created\s*│\s*(\S+ \S+)", result.stdout)
    logged = re.search(r"last logged\s*│\s*(\S+ \S+)", result.stdout)
    assert created and logged, result.stdout
    for found in (created, logged):
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", found.group(1))


def test_inspect_cuts_a_long_class_list_short(trained_run, workdir):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    # classes the data does not have: inspect reads the header alone, so it shows them
    _forge(ckpt, workdir / "f.safetensors", _config_edit(classes=[f"c{i}" for i in range(5000)]))
    result = invoke("inspect", "f.safetensors")
    assert result.exit_code == 0, result.output
    assert "c19 ... (5000 classes)" in result.stdout and "c20" not in result.stdout
    plain = invoke("inspect", ckpt)  # every config key; the 20 classes shown add a few lines
    assert plain.exit_code == 0
    assert len(result.stdout.splitlines()) <= len(plain.stdout.splitlines()) + 4


def test_json_output_is_strict_json_whatever_numbers_a_checkpoint_holds(trained_run):
    """A run's last record may hold NaN or infinite losses (the step before the divergence guard
    acted): --json writes them as text, never as NaN/Infinity, which JSON readers refuse."""
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    rewrite(ckpt, ckpt, lambda tensors, meta: meta.update(
        {"ganctl.metrics": '{"step": 4, "loss_D": NaN, "loss_G": Infinity}'}))
    result = invoke("inspect", ckpt, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} in --json"))
    assert (doc["metrics"]["loss_D"], doc["metrics"]["loss_G"]) == ("nan", "inf")


# --- user strings ---------------------------------------------------------------------------------

def test_terminal_escapes_in_user_strings_are_shown_not_sent(trained_run, workdir):
    from helpers import rewrite
    bad = workdir / "bad.safetensors"
    rewrite(trained_run / "checkpoints" / "step-000000004.safetensors", bad,
            lambda t, m: m.update({"ganctl.created": "\x1b[31mred\x1b[0m"}))
    result = invoke("inspect", bad)
    assert result.exit_code == 0 and "\x1b" not in result.stdout and "\\x1b[31mred" in result.stdout
    assert_one_line_error(invoke("inspect", "no\x1b[2Jwhere"), 1, "no\\x1b[2Jwhere does not exist")


def test_markup_in_user_strings_is_printed_as_text(workdir, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the whole path on one line of the table
    folder = image_folder(workdir / "x[" / "b]", 8)  # the path reads x[/b]: a closing markup tag
    assert invoke("train", *TINY, "--steps", "1", "--dataset", str(folder), "--resolution", "32",
                  "--out", "r").exit_code == 0
    result = invoke("inspect", "r")
    assert result.exit_code == 0 and "x[/b]" in result.stdout

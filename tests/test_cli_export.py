"""`ganctl export` from the command line: TorchScript and ONNX, the format from OUT's name, and
what it refuses (the exported files themselves: test_export.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, invoke


def test_torchscript_export_from_the_command_line(run):
    result = invoke("export", run, "g.pt", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["max_abs_diff"] <= 1e-4 and doc["checked_batch_sizes"] == [4, 7, 1]
    loaded = torch.jit.load("g.pt")
    assert tuple(loaded(torch.zeros(5, doc["z_dim"])).shape) == (5, 3, 32, 32)


def sample_json(*args: object) -> dict:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_export_takes_its_format_from_the_name_and_refuses_a_mismatch(run):
    pytest.importorskip("onnxruntime")
    doc = sample_json("export", run, "g.onnx")
    assert doc["format"] == "onnx" and doc["z_dim"] == 100
    result = invoke("export", run, "g2.onnx", "--format", "torchscript")
    assert result.exit_code == 2 and "named for onnx" in result.stderr
    assert not Path("g2.onnx").exists()
    result = invoke("export", run, "g.pt", "--format", "onnx")
    assert result.exit_code == 2 and "g.pt is named for torchscript but --format is onnx" in result.stderr
    # a name that says no format takes --format's (it was 'named for torchscript')
    assert sample_json("export", run, "g.bin", "--format", "onnx")["format"] == "onnx"


def test_export_without_out_says_so(run):
    for args in ([str(run)], ["latest"]):
        assert_one_line_error(invoke("export", *args), 2, "is what to export; give OUT")
    assert_one_line_error(invoke("export", run, "g.pt", "--format", "tflite"), 2,
                          "'tflite' is not torchscript or onnx")


def test_export_never_writes_over_a_checkpoint(run):
    ckpt = run / "checkpoints" / "step-000000004.safetensors"
    before = ckpt.read_bytes()
    assert_one_line_error(invoke("export", ckpt), 2, "is what to export; give OUT")
    assert_one_line_error(invoke("export", run, ckpt), 1, "never over a checkpoint")
    assert ckpt.read_bytes() == before

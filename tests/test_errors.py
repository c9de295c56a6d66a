"""Every expected failure: one line on stderr, the right exit code, no traceback."""

import json

import pytest
import torch
from helpers import assert_one_line_error, invoke


@pytest.mark.parametrize("args, code, fragments", [
    (["--steps", "0"], 2, ["--steps"]),
    (["--batch-size", "0"], 2, ["--batch-size"]),
    (["--resolution", "48"], 1, ["dcgan does not support resolution 48", "32, 64, 128"]),
    (["--resolution", "16"], 1, ["dcgan does not support resolution 16"]),
    (["--channels", "2"], 1, ["channels must be 1 or 3"]),
    (["--dataset", "nope"], 1, ["unknown dataset 'nope'", "shapes"]),
    (["--arch", "stylegan9"], 1, ["unknown arch 'stylegan9'", "dcgan"]),
    (["--loss", "nope"], 1, ["unknown loss 'nope'", "bce"]),
    (["--lr-g", "-1"], 1, ["lr_g must be a number above 0.0 and at most 10.0, got -1.0"]),
    (["--lr-d", "inf"], 1, ["lr_d must be a number above 0.0 and at most 10.0, got inf"]),
    (["--split", "test"], 1, ["shapes has no split"]),
    (["--device", "tpu"], 1, ["device 'tpu'"]),
    (["--batch-size", "9000"], 1, ["fewer than batch_size 9000"]),
    (["--config", "missing.toml"], 1, ["missing.toml does not exist"]),
    (["--d-steps", "0"], 2, ["--d-steps"]),
    (["--d-steps", "1000000"], 2, ["--d-steps"]),
    (["--steps"], 2, ["--steps"]),
    (["--bogus"], 2, ["--bogus"]),
])
def test_bad_train_input(workdir, args, code, fragments):
    result = invoke("train", *args)
    assert_one_line_error(result, code, *fragments)
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_absent_cuda_is_a_one_line_error(trained_run, device):
    assert_one_line_error(invoke("train", "--device", device), 1, f"--device {device}",
                          "no CUDA GPU")
    assert_one_line_error(invoke("sample", "x.png", "--device", device), 1, "no CUDA GPU")


def test_no_runs_yet(workdir):
    assert_one_line_error(invoke("sample", "x.png"), 1, "no checkpoints found under runs/")
    assert_one_line_error(invoke("inspect"), 1, "no checkpoints found")
    assert_one_line_error(invoke("resume"), 1, "no checkpoints found")


def test_missing_checkpoint_paths(workdir):
    assert_one_line_error(invoke("sample", "x.png", "--ckpt", "nope.safetensors"), 1,
                          "nope.safetensors does not exist")
    assert_one_line_error(invoke("inspect", "nope"), 1, "nope does not exist")
    assert_one_line_error(invoke("resume", "nope"), 1, "nope does not exist")
    (workdir / "empty").mkdir()
    assert_one_line_error(invoke("inspect", "empty"), 1, "not a ganctl run")


def test_debug_shows_the_traceback(workdir):
    result = invoke("train", "--dataset", "nope", "--debug")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "DataError" in result.stderr


def test_every_command_has_help_with_an_example():
    for command in ("train", "resume", "sample", "inspect"):
        result = invoke(command, "--help")
        assert result.exit_code == 0
        assert "Example: ganctl " + command in result.stdout


@pytest.mark.parametrize("args, code, fragment", [
    (["train", "--lr-g", "-1", "--json"], 1, "lr_g must be a number above 0.0 and at most 10.0"),
    (["train", "--steps", "0", "--json"], 2, "--steps"),
    (["train", "--json", "--bogus"], 2, "--bogus"),
    (["inspect", "nowhere", "--json"], 1, "nowhere does not exist"),
    (["eval", "--metrics", "is", "--json"], 1, "unknown metric 'is'"),
])
def test_json_mode_reports_errors_as_one_document(workdir, args, code, fragment):
    result = invoke(*args)
    assert result.exit_code == code, result.output
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == code and fragment in doc["error"]
    assert fragment in result.stderr  # the human line as well


def test_terminal_escapes_in_user_strings_are_shown_not_sent(trained_run, workdir):
    from helpers import rewrite
    bad = workdir / "bad.safetensors"
    rewrite(trained_run / "checkpoints" / "step-000000004.safetensors", bad,
            lambda t, m: m.update({"ganctl.created": "\x1b[31mred\x1b[0m"}))
    result = invoke("inspect", bad)
    assert result.exit_code == 0 and "\x1b" not in result.stdout and "\\x1b[31mred" in result.stdout
    assert_one_line_error(invoke("inspect", "no\x1b[2Jwhere"), 1, "no\\x1b[2Jwhere does not exist")


LONG = "a" * 3000


@pytest.mark.parametrize("args, fragments", [
    (["--init-from", "x\ny"], ["x\\ny does not exist"]),  # a line break in a value: shown as \n
    (["--config", "odd\r.toml"], ["odd\\r.toml does not exist"]),
    (["--arch", LONG], ["unknown arch 'aaaa", "... (3002 characters)"]),
    (["--loss", LONG], ["unknown loss 'aaaa", "... (3002 characters)"]),
    (["--preset", LONG], ["(3002 characters)"]),
    (["--eval-metrics", LONG], ["unknown metric 'aaaa", "(3002 characters)"]),
    (["--augment", LONG], ["augment 'aaaa", "(3002 characters)"]),
    (["--dataset", LONG], ["File name too long", "use a shorter path"]),
])
def test_a_value_quoted_in_an_error_keeps_it_one_short_line(workdir, args, fragments):
    for json_mode in ([], ["--json"]):
        result = invoke("train", *args, "--print-config", *json_mode)
        assert_one_line_error(result, 1, *fragments)
        assert len(result.stderr) < 400, result.stderr
        if json_mode:
            assert "\n" not in json.loads(result.stdout)["error"]

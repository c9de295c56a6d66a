"""What OUT may be for `ganctl sample` and `ganctl export` alike (ganctl/api/outputs.py): never a
file of another kind, a link or a folder, and a name too long or a read-only file is a one-line
error that leaves things as they were."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import assert_one_line_error, invoke


def test_out_never_replaces_a_file_of_another_kind(run):
    """A run's metrics, config or checkpoint named as OUT by mistake is refused; an image over
    an image, or a model over a model, is replaced."""
    metrics = run / "metrics.jsonl"
    before = metrics.read_bytes()
    assert_one_line_error(invoke("export", run, metrics), 1, "is not a TorchScript file")
    (run / "g.onnx").write_text("not a model")
    assert_one_line_error(invoke("export", run, run / "g.onnx"), 1, "is not an ONNX file")
    ckpt = run / "checkpoints" / "step-000000004.safetensors"
    shutil.copy(ckpt, "ck.png")
    assert_one_line_error(invoke("sample", "-n", "1", "ck.png", "--ckpt", run), 1,
                          "ck.png exists and is not an image")
    assert metrics.read_bytes() == before and Path("ck.png").read_bytes() == ckpt.read_bytes()
    assert invoke("sample", "-n", "1", "again.png", "--ckpt", run).exit_code == 0
    assert invoke("sample", "-n", "2", "again.png", "--ckpt", run).exit_code == 0  # image over image
    assert invoke("export", run, "g.pt").exit_code == 0
    assert invoke("export", run, "g.pt").exit_code == 0


def test_out_may_not_be_a_link_or_a_folder(run):
    Path("target.txt").write_text("keep")
    Path("link.png").symlink_to("target.txt")
    assert_one_line_error(invoke("sample", "-n", "2", "link.png", "--ckpt", run), 1, "symbolic link")
    assert_one_line_error(invoke("export", run, "link.png"), 1, "symbolic link")
    assert Path("link.png").is_symlink() and Path("target.txt").read_text() == "keep"
    Path("folder.png").mkdir()
    assert_one_line_error(invoke("sample", "-n", "2", "folder.png", "--ckpt", run), 1,
                          "not a regular file")


LONG_NAME = "x" * 300


@pytest.mark.parametrize("command", [["sample", "-n", "2", f"{LONG_NAME}.png", "--ckpt", "RUN"],
                                     ["export", "RUN", f"{LONG_NAME}.pt"]])
def test_an_out_name_too_long_for_the_file_system_is_one_line(trained_run, command):
    args = [str(trained_run) if a == "RUN" else a for a in command]
    result = invoke(*args, "--json")
    assert_one_line_error(result, 1, "File name too long", "use a shorter path")
    assert json.loads(result.stdout)["exit_code"] == 1 and len(result.stderr) < 400


def test_an_out_that_names_a_folder_is_a_bad_command_line(trained_run):
    for command in (["sample", "new/", "--ckpt", trained_run], ["export", trained_run, "new/"]):
        result = invoke(*command)
        assert result.exit_code == 2 and "new/ names a folder; give a file's name" in result.stderr
    assert not Path("new").exists()


def test_a_read_only_out_is_left_as_the_user_made_it(trained_run):
    for command, out in ((["sample", "-n", "1", "g.png", "--ckpt", trained_run], "g.png"),
                         (["export", trained_run, "g.pt"], "g.pt")):
        assert invoke(*command).exit_code == 0
        Path(out).chmod(0o444)
        before = Path(out).read_bytes()
        assert_one_line_error(invoke(*command), 1, f"{out} is read-only; make it writable")
        assert Path(out).read_bytes() == before and Path(out).stat().st_mode & 0o777 == 0o444

"""`ganctl train`: the run directory it writes, its output, and the --out/--resume/--overwrite
rules that keep an existing run from being written into or lost."""

import json

import pytest
from helpers import TINY, assert_one_line_error, image_folder, invoke, read_json, valid_steps

from ganctl import rundir, session
from ganctl.config import Config
from ganctl.engine.loop import RunResult


def test_train_writes_the_run_directory(workdir):
    result = invoke("train", *TINY)
    assert result.exit_code == 0, result.output
    run_dir = workdir / "runs" / "0001-shapes-dcgan"
    assert "device cpu" in result.stdout
    assert f"run {run_dir.relative_to(workdir)}" in result.stdout

    config = read_json(run_dir / "config.json")
    assert config["steps"] == 4 and config["batch_size"] == 8 and config["g_width"] == 8
    assert config["dataset"] == "shapes" and config["resolution"] == 32 and config["classes"] == [
        "circle", "square", "triangle"]
    Config.from_dict(config)  # a complete, valid config

    records = rundir.read_metrics(run_dir)
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert {"loss_D", "loss_G", "D_real", "D_fake", "img_per_s", "time"} <= set(r)
        assert 0 < r["D_real"] < 1 and 0 < r["D_fake"] < 1 and r["loss_D"] > 0

    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == [
        "step-000000002.png", "step-000000004.png"]
    ckpts = [p.name for p in rundir.list_checkpoints(run_dir / "checkpoints")]
    assert ckpts == ["step-000000002.safetensors", "step-000000004.safetensors"]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == ckpts[-1]
    assert not [p for p in run_dir.rglob(".*tmp*")]  # no temp files left behind


def fake_train(config, out, log, download, deadline, overwrite):
    """The engine's train as the CLI sees it: a note on the log, then a result."""
    log.info("run r: dcgan 32x32x3 on shapes (8192 images), device cpu")
    return RunResult(str(out), f"{out}/checkpoints/step-000000004.safetensors",
                     f"{out}/samples/step-000000004.png", 4, 4, "cpu", 0.5, {"step": 4})


def test_json_output_is_one_document(workdir, monkeypatch):
    monkeypatch.setattr(session, "train", fake_train)
    result = invoke("train", *TINY, "--out", "r", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc == {"run_dir": "r", "checkpoint": "r/checkpoints/step-000000004.safetensors",
                   "samples": "r/samples/step-000000004.png", "step": 4, "steps": 4,
                   "device": "cpu", "seconds": 0.5, "metrics": {"step": 4}, "stopped": None,
                   "batch_size": None, "precision": None, "compiled": None,
                   "compile_seconds": None}
    assert "device cpu" in result.stderr  # human lines went to stderr


def test_printed_commands_are_shell_quoted(workdir, monkeypatch):
    real_train = session.train
    monkeypatch.setattr(session, "train", fake_train)
    result = invoke("train", *TINY, "--out", "my run")
    assert "next: ganctl sample -n 64 out.png --ckpt 'my run'" in result.stdout
    monkeypatch.setattr(session, "train", real_train)
    (workdir / "my run").mkdir()
    (workdir / "my run" / "config.json").write_text(Config().to_json())
    (workdir / "my run" / ".ganctl-run").write_text("a ganctl run\n")
    again = invoke("train", *TINY, "--out", "my run")
    assert "ganctl resume 'my run'" in again.stderr


def test_train_at_64_grayscale(workdir):
    result = invoke("train", *TINY, "--steps", "1", "--resolution", "64", "--channels", "1",
                    "--out", "r")
    assert result.exit_code == 0, result.output
    config = read_json(workdir / "r" / "config.json")
    assert config["resolution"] == 64 and config["channels"] == 1
    assert valid_steps(workdir / "r") == [1]


def test_markup_in_user_strings_is_printed_as_text(workdir, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the whole path on one line of the table
    folder = image_folder(workdir / "x[" / "b]", 8)  # the path reads x[/b]: a closing markup tag
    assert invoke("train", *TINY, "--steps", "1", "--dataset", str(folder), "--resolution", "32",
                  "--out", "r").exit_code == 0
    result = invoke("inspect", "r")
    assert result.exit_code == 0 and "x[/b]" in result.stdout


# --- an existing --out ------------------------------------------------------------------------------

def test_out_into_existing_run_is_refused_and_untouched(trained_run, workdir):
    before = {p: p.stat().st_mtime_ns for p in trained_run.rglob("*")}
    assert_one_line_error(invoke("train", *TINY, "--out", "runs/0001-shapes-dcgan"), 1,
                          "already holds a run", "ganctl resume runs/0001-shapes-dcgan")
    assert {p: p.stat().st_mtime_ns for p in trained_run.rglob("*")} == before


def test_out_into_nonempty_directory_is_refused(workdir):
    (workdir / "r").mkdir()
    (workdir / "r" / "notes.txt").write_text("mine")
    assert_one_line_error(invoke("train", *TINY, "--out", "r"), 1, "not an empty directory")
    assert (workdir / "r" / "notes.txt").read_text() == "mine"


def test_unwritable_out_is_an_error(workdir):
    (workdir / "file").write_text("x")
    assert_one_line_error(invoke("train", *TINY, "--out", "file/run"), 1, "cannot create")


def test_train_resume_and_overwrite_flags(workdir):
    assert invoke("train", *TINY, "--steps", "2", "--out", "r").exit_code == 0
    result = invoke("train", *TINY, "--out", "r", "--resume")
    assert result.exit_code == 0, result.output
    assert valid_steps(workdir / "r")[-1] == 4
    refused = invoke("train", *TINY, "--batch-size", "4", "--out", "r", "--resume")
    assert refused.exit_code == 1 and "started with batch_size = 8" in refused.stderr
    (workdir / "r" / "mine.txt").write_text("keep me")
    result = invoke("train", *TINY, "--steps", "2", "--out", "r", "--overwrite")
    assert result.exit_code == 0, result.output
    assert valid_steps(workdir / "r") == [2] and (workdir / "r" / "mine.txt").read_text() == "keep me"
    assert invoke("train", "--out", "r", "--resume", "--overwrite").exit_code == 2
    fresh = invoke("train", *TINY, "--steps", "2", "--out", "new", "--resume")  # nothing to resume
    assert fresh.exit_code == 0 and valid_steps(workdir / "new") == [2]


def test_resume_needs_out(workdir):
    result = invoke("train", "--resume")
    assert result.exit_code == 2 and "needs --out" in result.output


def test_train_resume_with_a_relative_folder_dataset(workdir):
    image_folder(workdir / "pics", 8)
    args = [*TINY, "--dataset", "pics/", "--resolution", "32", "--out", "r"]
    assert invoke("train", *args, "--steps", "2").exit_code == 0
    result = invoke("train", *args, "--steps", "3", "--resume")
    assert result.exit_code == 0, result.output
    assert valid_steps(workdir / "r")[-1] == 3


@pytest.mark.parametrize("args, code, fragment", [
    (["--dataset", ""], 1, "dataset is empty"),
    (["--dataset", "  "], 1, "dataset is empty"),
    (["--seed", str(2**32)], 2, "--seed"),
    (["--z-dim", "100000000"], 1, "z_dim must be a whole number from 1 to 16384"),
])
def test_more_bad_train_input(workdir, args, code, fragment):
    result = invoke("train", *TINY, *args, "--out", "r")
    assert result.exit_code == code and fragment in result.output, result.output
    assert "Traceback" not in result.output and not (workdir / "r").exists()

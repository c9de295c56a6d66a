"""Run directories: numbering, the runs root, pruning, the `latest` pointer and finding the
checkpoint a command was pointed at, falling back past damaged files."""

import json
from pathlib import Path

import torch
from helpers import TINY, assert_one_line_error, damage, invoke, verifying_steps

from ganctl import rundir
from ganctl.sample import load_generator


def test_prune_keeps_the_newest_up_to_the_current_step(tmp_path):
    for step in (1, 2, 10, 3):
        (tmp_path / rundir.checkpoint_name(step)).write_bytes(b"x")
    removed = rundir.prune(tmp_path, 2, current=10)
    assert [p.name for p in removed] == ["step-000000001.safetensors", "step-000000002.safetensors"]
    assert [p.name for p in rundir.list_checkpoints(tmp_path)] == [
        "step-000000003.safetensors", "step-000000010.safetensors"]
    # resumed from step 3 and now at 4: step 10 (a later, abandoned file) is neither counted nor
    # deleted, and the file just written is always kept
    (tmp_path / rundir.checkpoint_name(4)).write_bytes(b"x")
    assert [p.name for p in rundir.prune(tmp_path, 1, current=4)] == ["step-000000003.safetensors"]
    assert [p.name for p in rundir.list_checkpoints(tmp_path)] == [
        "step-000000004.safetensors", "step-000000010.safetensors"]


def test_runs_are_numbered_and_keep_prunes(workdir):
    assert invoke("train", *TINY, "--keep", "1").exit_code == 0
    assert invoke("train", *TINY, "--steps", "2").exit_code == 0
    first, second = sorted((workdir / "runs").iterdir())
    assert (first.name, second.name) == ("0001-shapes-dcgan", "0002-shapes-dcgan")
    assert [p.name for p in rundir.list_checkpoints(first / "checkpoints")] == [
        "step-000000004.safetensors"]
    assert len(rundir.list_checkpoints(second / "checkpoints")) == 1


def test_runs_root_moves_with_env(workdir, monkeypatch):
    monkeypatch.setenv("GANCTL_RUNS", str(workdir / "elsewhere"))
    assert invoke("train", *TINY, "--steps", "1").exit_code == 0
    assert (workdir / "elsewhere" / "0001-shapes-dcgan" / "config.json").is_file()


def test_ckpt_may_name_the_latest_pointer_or_the_checkpoints_folder(trained_run):
    for target in (trained_run / "checkpoints" / "latest", trained_run / "checkpoints"):
        result = invoke("inspect", target, "--json")
        assert result.exit_code == 0 and json.loads(result.stdout)["step"] == 4


def test_resume_falls_back_to_the_newest_valid_checkpoint(trained_run):
    damage(trained_run / "checkpoints" / "step-000000004.safetensors", "corrupted")
    result = invoke("resume", trained_run, "--steps", "5")
    assert result.exit_code == 0, result.output
    assert "skipping step-000000004.safetensors" in result.stdout
    assert "from step-000000002.safetensors (step 2 of 5)" in result.stdout
    assert invoke("sample", "x.png", "--ckpt", trained_run).exit_code == 0


def test_unreadable_pointers_and_headers_fall_back(trained_run):
    ckpts = trained_run / "checkpoints"
    (ckpts / "latest").write_bytes(b"\xff\xfe")
    deep = b"[" * 100000 + b"]" * 100000
    newest = ckpts / "step-000000004.safetensors"
    newest.write_bytes(len(deep).to_bytes(8, "little") + deep)
    result = invoke("resume", trained_run, "--steps", "5")
    assert result.exit_code == 0, result.output
    assert "skipping step-000000004.safetensors" in result.stdout and "(step 2 of 5)" in result.stdout


def test_resume_from_an_older_checkpoint_never_prunes_into_nothing(workdir):
    assert invoke("train", *TINY, "--steps", "6", "--out", "r").exit_code == 0
    ckpts = workdir / "r" / "checkpoints"
    damage(ckpts / "step-000000004.safetensors", "corrupted")
    damage(ckpts / "step-000000006.safetensors", "corrupted")
    result = invoke("resume", ckpts / "step-000000002.safetensors", "--steps", "3", "--keep", "2")
    assert result.exit_code == 0, result.output
    assert (ckpts / "latest").read_text().strip() == "step-000000003.safetensors"
    assert verifying_steps(ckpts) == [2, 3]
    assert invoke("resume", "r", "--steps", "4").exit_code == 0  # the run goes on
    assert verifying_steps(ckpts)[-1] == 4


# --- what is a run, and what ganctl may delete -------------------------------------------------------

def test_a_folder_with_someone_elses_config_json_is_not_a_run(workdir):
    proj = workdir / "proj"
    proj.mkdir()
    (proj / "config.json").write_text('{"name": "my web app"}')
    (proj / "metrics.jsonl").write_text('{"important": 1}\n')
    for extra in ([], ["--overwrite"]):
        assert_one_line_error(invoke("train", *TINY, "--out", proj, *extra), 1,
                              "not an empty directory (nor a ganctl run)")
    assert (proj / "config.json").read_text() == '{"name": "my web app"}'
    assert (proj / "metrics.jsonl").read_text() == '{"important": 1}\n'
    assert_one_line_error(invoke("resume", proj), 1, "is a directory but not a ganctl run")


def test_runs_carry_a_marker_and_runs_of_earlier_versions_still_count(trained_run):
    assert (trained_run / rundir.MARKER).is_file() and rundir.is_run_dir(trained_run)
    (trained_run / rundir.MARKER).unlink()  # as a run of an earlier version: a valid config.json
    assert rundir.is_run_dir(trained_run)
    assert invoke("resume", trained_run, "--steps", "5").exit_code == 0


def test_a_run_that_fails_before_training_leaves_nothing_behind(workdir, monkeypatch):
    real_write = rundir.write_config

    def full_disk(run_dir, config):
        raise OSError(28, "No space left on device", str(run_dir / "config.json"))

    monkeypatch.setattr(rundir, "write_config", full_disk)
    for out in (["--out", "r"], []):
        result = invoke("train", *TINY, *out)
        assert result.exit_code == 1 and "No space left on device" in result.stderr
    assert not (workdir / "r").exists() and not list((workdir / "runs").iterdir())
    (workdir / "empty").mkdir()  # a folder the user made stays, emptied of what ganctl wrote
    assert invoke("train", *TINY, "--out", "empty").exit_code == 1
    assert (workdir / "empty").is_dir() and not list((workdir / "empty").iterdir())
    monkeypatch.setattr(rundir, "write_config", real_write)
    assert invoke("train", *TINY, "--steps", "2", "--out", "r").exit_code == 0


def test_nothing_is_deleted_when_a_run_holds_something_odd(workdir):
    assert invoke("train", *TINY, "--steps", "2", "--out", "r").exit_code == 0
    ckpts = workdir / "r" / "checkpoints"
    for path in ckpts.iterdir():
        path.unlink()
    ckpts.rmdir()
    ckpts.write_text("a file where the checkpoints folder was")
    before = sorted(p.name for p in (workdir / "r").iterdir())
    for command in (["resume", "r"], ["train", *TINY, "--out", "r", "--overwrite"]):
        assert_one_line_error(invoke(*command), 1, "checkpoints is not what ganctl wrote there")
        assert sorted(p.name for p in (workdir / "r").iterdir()) == before


def test_damaged_run_files_do_not_block_a_resume(trained_run):
    with open(trained_run / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 3, "bad": "\xff\xfe"}\n' + b"[" * 100000 + b"\n")
    result = invoke("resume", trained_run, "--steps", "5")
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in rundir.read_metrics(trained_run)][-1] == 5
    (trained_run / "config.json").write_text("[" * 100000)
    assert_one_line_error(invoke("train", *TINY, "--out", trained_run, "--resume"), 1,
                          "config.json is damaged (nested too deeply)")


def test_a_checkpoint_pruned_after_it_was_verified_still_loads(trained_run):
    header = rundir.locate(trained_run, print)
    header.path.unlink()  # the trainer pruned it meanwhile
    loaded = load_generator(header, torch.device("cpu"))
    assert loaded.header.step == 4 and loaded.header.blob is None


def test_a_sample_grid_that_cannot_be_written_does_not_stop_training(workdir, monkeypatch):
    from ganctl.engine import hooks

    def read_only(images, path):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(hooks, "save_grid", read_only)
    result = invoke("train", *TINY, "--out", "r")
    assert result.exit_code == 0, result.output
    assert "cannot write the sample grid" in result.stdout and "Read-only file system" in result.stdout
    assert [p.name for p in rundir.list_checkpoints(workdir / "r" / "checkpoints")] == [
        "step-000000002.safetensors", "step-000000004.safetensors"]


def test_a_runs_root_that_is_a_file_is_named(workdir, monkeypatch):
    Path("afile").write_text("mine")
    monkeypatch.setenv("GANCTL_RUNS", "afile/sub")
    result = invoke("train", *TINY)
    assert_one_line_error(result, 1, "the runs folder afile/sub cannot be made: afile is a file, not "
                                     "a folder (GANCTL_RUNS moves ./runs)")
    assert Path("afile").read_text() == "mine"

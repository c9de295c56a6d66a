"""Run directories: numbering, the runs root, pruning, the `latest` pointer and finding the
checkpoint a command was pointed at, falling back past damaged files."""

import json

from helpers import TINY, damage, invoke, verifying_steps

from ganctl import rundir


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

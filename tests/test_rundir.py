"""Run directories: numbering, the runs root, pruning, the `latest` pointer and finding the
checkpoint a command was pointed at (past damaged files, never opening a FIFO), what is a run, what
--overwrite may delete, and metrics.jsonl read back."""

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import (
    RECORD,
    TINY,
    assert_clean,
    assert_one_line_error,
    damage,
    invoke,
    start,
    verifying_steps,
    wait_for_step,
)

from ganctl import rundir
from ganctl.rundir import read_metrics
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


# --- finding the checkpoint a command was pointed at ----------------------------------------------

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


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("where", ["latest", "newest", "latest names it"])
def test_fifos_in_checkpoints_are_never_opened(trained_run, where):
    ckpts = trained_run / "checkpoints"
    fifo = ckpts / ("latest" if where == "latest" else "step-000000999.safetensors")
    if where == "latest":
        fifo.unlink()
    os.mkfifo(fifo)
    if where == "latest names it":
        (ckpts / "latest").write_text(fifo.name + "\n")
    elif where == "newest":
        (ckpts / "latest").unlink()
    for command in (["inspect", trained_run, "--json"], ["inspect", "--json"],
                    ["sample", "o.png", "--ckpt", trained_run, "--json"]):
        result = invoke(*command)  # a hang here is the bug
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["step"] == 4
    assert invoke("resume", trained_run, "--steps", "5").exit_code == 0
    if where != "latest":
        assert_one_line_error(invoke("inspect", fifo), 1, "not a regular file")


@pytest.mark.slow
def test_sample_and_inspect_in_a_loop_while_a_trainer_checkpoints_and_prunes_every_step(workdir):
    proc = start("train", "--steps", "100000", "--batch-size", "4", "--g-width", "4",
                 "--d-width", "4", "--ckpt-every", "1", "--keep", "1", "--log-every", "1",
                 "--sample-every", "100000", "--device", "cpu", "--no-curves", "--out", "r",
                 cwd=workdir)
    failures, steps = [], set()
    try:
        wait_for_step(proc.stdout, 3)
        for i in range(21):
            command = ["sample", "-n", "1", "o.png", "--ckpt", "r", "--device", "cpu", "--json"] \
                if i % 3 else ["inspect", "r", "--json"]
            result = invoke(*command)
            if result.exit_code != 0:
                failures.append(result.output)
            else:
                steps.add(json.loads(result.stdout)["step"])
    finally:
        proc.terminate()
        proc.communicate(timeout=120)
    assert failures == []
    assert len(steps) >= 5  # the trainer really moved on (and pruned) while we read


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


@pytest.mark.parametrize("text", ['{}', '{"steps": 5}',
                                  '{"batch_size": 8, "steps": 20, "g_width": 8, "d_width": 8}'])
def test_a_users_ganctl_shaped_config_json_does_not_make_a_run(workdir, text):
    folder = workdir / "u"
    folder.mkdir()
    (folder / "config.json").write_text(text)
    (folder / "metrics.jsonl").write_text('{"mine": 1}\n')
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert_one_line_error(invoke("train", *TINY, "--out", folder, *extra), 1,
                              "not an empty directory (nor a ganctl run)")
    assert_one_line_error(invoke("resume", folder), 1, "not a ganctl run")
    assert (folder / "config.json").read_text() == text
    assert (folder / "metrics.jsonl").read_text() == '{"mine": 1}\n'


def test_overwrite_leaves_foreign_files_even_named_like_ganctls(trained_run):
    mine = {"checkpoints/README.txt", "checkpoints/.DS_Store", "checkpoints/step-final.safetensors",
            "checkpoints/.notes.tmp-backup", "samples/step-best.png", "samples/mine.png", "notes.txt"}
    for rel in mine:
        (trained_run / rel).write_text("mine")
    result = invoke("train", *TINY, "--out", trained_run, "--overwrite")
    assert result.exit_code == 0, result.output
    for rel in mine:
        assert (trained_run / rel).read_text() == "mine", rel
    assert rundir.is_run_dir(trained_run) and rundir.list_checkpoints(trained_run / "checkpoints")


def test_overwrite_that_cannot_remove_a_file_deletes_nothing(trained_run, monkeypatch):
    before = sorted(str(p.relative_to(trained_run)) for p in trained_run.rglob("*"))
    real_rename = Path.rename

    def refuse_one(self, target):
        if self.name == "step-000000004.safetensors":
            raise PermissionError(1, "Operation not permitted", str(self))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", refuse_one)
    result = invoke("train", *TINY, "--out", trained_run, "--overwrite")
    assert_one_line_error(result, 1, "step-000000004.safetensors (Operation not permitted)",
                          "nothing was deleted")
    assert sorted(str(p.relative_to(trained_run)) for p in trained_run.rglob("*")) == before
    monkeypatch.undo()
    assert invoke("resume", trained_run, "--steps", "5").exit_code == 0


def test_overwrite_with_a_dangling_checkpoints_link_deletes_nothing(trained_run):
    import shutil
    shutil.rmtree(trained_run / "checkpoints")
    (trained_run / "checkpoints").symlink_to(trained_run / "unmounted-scratch")
    before = sorted(p.name for p in trained_run.iterdir())
    assert_one_line_error(invoke("train", *TINY, "--out", trained_run, "--overwrite"), 1,
                          "is not what ganctl wrote there")
    assert sorted(p.name for p in trained_run.iterdir()) == before


def test_overwrite_removes_the_watching_files_too(workdir):
    """curves.png, RUN/tensorboard/ and wandb_id.txt are ganctl's: --overwrite replaces them, so
    a new run never continues the old one's W&B run or TensorBoard curves."""
    pytest.importorskip("tensorboard")
    assert invoke("train", *TINY, "--curves", "--out", "r", "--tensorboard").exit_code == 0
    Path("r/wandb_id.txt").write_text("abcdef0123456789\n")
    Path("r/.curves.png.tmp-123").write_bytes(b"half")
    Path("r/notes.txt").write_text("mine")
    old_events = sorted(Path("r/tensorboard").iterdir())
    assert Path("r/curves.png").is_file() and old_events
    assert invoke("train", *TINY, "--curves", "--out", "r", "--overwrite").exit_code == 0
    assert not Path("r/wandb_id.txt").exists() and not Path("r/.curves.png.tmp-123").exists()
    assert not Path("r/tensorboard").exists()  # this run has no --tensorboard
    assert Path("r/curves.png").is_file() and Path("r/notes.txt").read_text() == "mine"


@pytest.mark.parametrize("sub", ["tensorboard", "checkpoints", "samples"])
def test_overwrite_never_empties_a_linked_folder(workdir, sub):
    """RUN/tensorboard linked to a shared log folder (or checkpoints/ to a bigger disk): its files
    are not the run's to delete; --overwrite refuses, and nothing is removed anywhere."""
    assert invoke("train", *TINY, "--out", "r").exit_code == 0
    shared = Path("shared")
    if Path("r", sub).exists():
        Path("r", sub).rename(shared)
    else:
        shared.mkdir()
    names = {"tensorboard": "events.out.tfevents.1.other.1.0", "checkpoints": "step-000000001.safetensors",
             "samples": "step-000000001.png"}
    (shared / names[sub]).write_bytes(b"someone else's")
    before = sorted(p.name for p in shared.iterdir())
    Path("r", sub).symlink_to(shared.absolute())
    result = invoke("train", *TINY, "--out", "r", "--overwrite")
    assert_one_line_error(result, 1, f"r/{sub} is not what ganctl wrote there")
    assert sorted(p.name for p in shared.iterdir()) == before
    assert Path("r/config.json").is_file()  # the run is still there too


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_as_run_files_or_config_files_never_hang(trained_run, workdir):
    os.mkfifo(workdir / "c.toml")
    assert_one_line_error(invoke("train", "--config", "c.toml"), 1, "not a regular file")
    (trained_run / "metrics.jsonl").unlink()
    os.mkfifo(trained_run / "metrics.jsonl")
    assert_one_line_error(invoke("resume", trained_run, "--steps", "5"), 1, "not a regular file")
    (trained_run / "metrics.jsonl").unlink()
    (trained_run / "config.json").unlink()
    os.mkfifo(trained_run / "config.json")
    for ckpt in (trained_run / "checkpoints").glob("step-*"):
        ckpt.unlink()
    assert_clean(invoke("resume", trained_run, "--steps", "5"))


# --- metrics.jsonl --------------------------------------------------------------------------------

def test_read_metrics_skips_a_line_cut_short(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps(RECORD) + "\n{\"step\": 1")
    assert read_metrics(tmp_path) == [RECORD]

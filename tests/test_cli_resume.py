"""Continuing a run with `ganctl resume` (and `train --resume`, under the same rules): exactly
where a straight run goes, from which checkpoint, what may change, and the damaged or stray run
files it meets."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import (
    SWITCHES,
    TINY,
    TINY_NO_STEPS,
    TRAIN2,
    assert_one_line_error,
    assert_same_tensors,
    final_tensors,
    help_text,
    image_folder,
    invoke,
    option_blocks,
    read_json,
    rewrite,
    start,
    valid_steps,
    wait_for_step,
)

from ganctl import api, checkpoint, rundir
from ganctl.config import FIELD_NAMES, RESUME_OVERRIDABLE
from ganctl.errors import ConfigError, UsageError


def test_resume_continues_exactly_where_a_straight_run_goes(workdir):
    assert invoke("train", *TINY_NO_STEPS, "--steps", "6", "--out", "straight").exit_code == 0
    assert invoke("train", *TINY_NO_STEPS, "--steps", "3", "--out", "split").exit_code == 0
    result = invoke("resume", "split", "--steps", "6")
    assert result.exit_code == 0, result.output
    assert "from step-000000003.safetensors (step 3 of 6)" in result.stdout

    step_a, a = final_tensors(workdir / "straight")
    step_b, b = final_tensors(workdir / "split")
    assert step_a == step_b == 6
    assert any(k.startswith("opt_G.state.") for k in a) and "rng.noise" in a
    assert_same_tensors(a, b)
    # the metrics of the replayed interval are logged once, and the stored config is updated
    assert [r["step"] for r in rundir.read_metrics(workdir / "split")] == [2, 3, 4, 6]
    assert json.loads((workdir / "split/config.json").read_text())["steps"] == 6


def test_exact_resume_with_mirror_and_labels_across_epochs_on_a_folder(workdir):
    # 10 images in 2 classes, batch 4: an epoch is 2 batches, so 7 steps cross 3 epochs
    image_folder(workdir / "imgs", 10, size=(40, 32), classes=2)
    args = ["--dataset", "imgs", "--resolution", "32", "--mirror", "--batch-size", "4",
            "--g-width", "8", "--d-width", "8", "--log-every", "1", "--ckpt-every", "3",
            "--sample-every", "100", "--device", "cpu"]
    assert invoke("train", *args, "--steps", "7", "--out", "straight").exit_code == 0
    assert invoke("train", *args, "--steps", "3", "--out", "split").exit_code == 0
    assert invoke("resume", "split", "--steps", "7").exit_code == 0
    (_, a), (_, b) = final_tensors(workdir / "straight"), final_tensors(workdir / "split")
    assert int(a["state.data_epoch"]) == 3
    assert_same_tensors(a, b)


def test_resume_without_argument_takes_the_newest_run(trained_run, workdir):
    result = invoke("resume", "--steps", "5", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["step"] == 5 and doc["run_dir"] == "runs/0001-shapes-dcgan"
    assert rundir.latest_in_run(trained_run).name == "step-000000005.safetensors"


def test_resume_from_a_checkpoint_file(trained_run):
    result = invoke("resume", trained_run / "checkpoints" / "step-000000002.safetensors",
                    "--steps", "3")
    assert result.exit_code == 0, result.output
    assert "(step 2 of 3)" in result.stdout


def test_resume_of_a_complete_run_says_so(trained_run):
    result = invoke("resume", trained_run, "--json")
    assert result.exit_code == 0
    assert "already complete at step 4" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["step"] == doc["steps"] == 4 and doc["seconds"] == 0.0 and doc["metrics"]["step"] == 4


def test_resume_to_fewer_steps_than_done_is_refused(trained_run):
    result = invoke("resume", trained_run, "--steps", "3")
    assert result.exit_code == 1
    assert "at step 4, past --steps 3" in result.stderr


def test_resume_cannot_change_the_model():
    result = invoke("resume", "--resolution", "64")
    assert result.exit_code == 2  # not an option of resume


def test_resume_checkpoint_outside_a_run(trained_run, workdir):
    lone = workdir / "lone.safetensors"
    lone.write_bytes((trained_run / "checkpoints" / "step-000000004.safetensors").read_bytes())
    result = invoke("resume", lone, "--steps", "5")
    assert result.exit_code == 1 and "not inside a run's checkpoints/" in result.stderr


def test_a_run_stopped_before_its_first_checkpoint_starts_again(workdir):
    assert invoke("train", *TINY, "--out", "r").exit_code == 0
    for path in (workdir / "r" / "checkpoints").iterdir():
        path.unlink()  # as if killed before the first checkpoint
    result = invoke("resume", "r")
    assert result.exit_code == 0, result.output
    assert "has no checkpoint yet" in result.stdout and valid_steps(workdir / "r") == [2, 4]
    for path in (workdir / "r" / "checkpoints").iterdir():
        path.unlink()
    assert invoke("train", *TINY, "--out", "r", "--resume").exit_code == 0
    assert valid_steps(workdir / "r") == [2, 4]


def test_noise_state_from_another_kind_of_device(trained_run, workdir):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    moved = workdir / "moved.safetensors"
    rewrite(ckpt, moved, lambda t, m: t.update({"rng.noise": torch.zeros(16, dtype=torch.uint8)}))
    shutil.move(moved, ckpt)  # a CUDA generator's 16-byte state, as a GPU run would leave
    result = invoke("resume", trained_run, "--steps", "5")
    assert result.exit_code == 0, result.output
    assert "noise sequence restarts from (seed, step 4)" in result.stdout


def test_class_names_may_not_change_under_a_run(workdir):
    image_folder(workdir / "imgs", 8, classes=2)
    args = [*TINY, "--steps", "2", "--dataset", "imgs", "--resolution", "32"]
    assert invoke("train", *args, "--out", "r").exit_code == 0
    (workdir / "imgs" / "c1").rename(workdir / "imgs" / "b1")  # same images, another class name
    for extra in ([], ["--allow-data-change"]):
        result = invoke("resume", "r", "--steps", "3", *extra)
        assert result.exit_code == 1, result.output
        assert ("the run was started with the classes c0, c1, but dataset" in result.stderr
                and "has b1, c0; labels would change meaning" in result.stderr)
    assert valid_steps(workdir / "r") == [2]


SCHEMA_2_KEYS = {  # the config of checkpoint schema 2, before the engine reshape
    "dataset", "data_dir", "split", "resolution", "channels", "crop", "mirror", "arch", "z_dim",
    "g_width", "d_width", "loss", "lr_g", "lr_d", "beta1", "beta2", "ema_decay", "deterministic",
    "batch_size", "steps", "seed", "log_every", "sample_every", "ckpt_every", "keep", "device"}


def test_a_checkpoint_of_the_previous_schema_resumes(trained_run, workdir):
    """Schema 2 (before class names, d_steps, evaluation and the model zoo) resumes as a run of
    today, bit for bit."""
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"

    def downgrade(tensors, meta):
        config = {k: v for k, v in json.loads(meta["ganctl.config"]).items() if k in SCHEMA_2_KEYS}
        meta.update({"ganctl.config": json.dumps(config), "ganctl.schema": "2"})

    rewrite(ckpt, workdir / "old.safetensors", downgrade)
    shutil.copy(ckpt, workdir / "new.safetensors")
    shutil.move(workdir / "old.safetensors", ckpt)
    assert checkpoint.read_header(ckpt).metadata["ganctl.schema"] == "2"
    assert invoke("resume", trained_run, "--steps", "6").exit_code == 0
    _, from_old = final_tensors(trained_run)
    shutil.move(workdir / "new.safetensors", ckpt)
    for later in ("step-000000006.safetensors", "latest"):
        (trained_run / "checkpoints" / later).unlink()
    assert invoke("resume", trained_run, "--steps", "6").exit_code == 0
    _, from_new = final_tensors(trained_run)
    assert_same_tensors(from_old, from_new)


# --- --help ---------------------------------------------------------------------------------------

def test_resume_help_shows_defaults_too(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    blocks = option_blocks(help_text("resume"))
    assert all("[default:" in block for name, block in blocks.items() if name not in SWITCHES
               and name not in ("--allow-data-change",))


# --- what may change ------------------------------------------------------------------------------

def test_a_run_whose_dataset_moved_names_it_and_takes_the_new_place(workdir):
    image_folder(workdir / "imgs", 8)
    assert invoke("train", *TRAIN2, "--dataset", "imgs", "--ckpt-every", "1", "--out", "r").exit_code == 0
    (workdir / "imgs").rename(workdir / "moved")
    result = invoke("resume", "r", "--steps", "3")
    assert_one_line_error(result, 1, str(workdir / "imgs"), "does not exist",
                          "ganctl resume r --dataset PATH")
    assert invoke("resume", "r", "--steps", "3", "--dataset", "moved").exit_code == 0
    assert json.loads((workdir / "r" / "config.json").read_text())["dataset"] == str(workdir / "moved")
    image_folder(workdir / "other", 9)
    result = invoke("resume", "r", "--steps", "4", "--dataset", "other")
    assert_one_line_error(result, 1, "changed since this run started")


def test_resume_compares_spectral_norm_by_its_effect(workdir):
    assert invoke("train", *TINY, "--out", "r").exit_code == 0  # dcgan: auto means off
    result = invoke("train", *TINY, "--steps", "6", "--no-spectral-norm", "--out", "r", "--resume")
    assert result.exit_code == 0, result.output
    assert read_json(workdir / "r" / "config.json")["spectral_norm"] == "auto"
    assert_one_line_error(invoke("train", *TINY, "--steps", "8", "--spectral-norm", "--out", "r",
                                 "--resume"), 1, "so spectral_norm cannot become 'on'")


def test_a_bad_resume_flag_is_the_users_error_not_the_checkpoints(trained_run):
    result = invoke("resume", trained_run, "--steps", "8", "--eval-metrics", "bogus")
    assert_one_line_error(result, 1, "unknown metric 'bogus'")
    assert "holds a config" not in result.stderr


# --- run files it meets ---------------------------------------------------------------------------

def test_non_utf8_lines_in_metrics_are_dropped_on_resume_and_counted(trained_run):
    metrics = trained_run / "metrics.jsonl"
    good = metrics.read_bytes()
    metrics.write_bytes(good + b'{"step": 3, "bad": "\xff\xfe"}\n[1, 2]\n{"step": 4, "cut\n')
    result = invoke("resume", trained_run, "--steps", "6")
    assert result.exit_code == 0, result.output
    assert "dropped 3 damaged line(s)" in result.output
    text = metrics.read_bytes()
    text.decode("utf-8")  # valid UTF-8 again
    assert b"\\ufffd" not in text and b"cut" not in text


@pytest.mark.parametrize("event", ['{"a": 1}', "[1, 2]", "null", "7"])
def test_a_metrics_line_with_an_odd_event_does_not_block_resume(trained_run, event):
    with open(trained_run / "metrics.jsonl", "a") as f:
        f.write(f'{{"event": {event}}}\n')
    assert invoke("resume", trained_run, "--steps", "5").exit_code == 0


def test_resume_before_the_first_checkpoint_keeps_stray_files(workdir):
    proc = start("train", *TINY[:-4], "--steps", "100000", "--ckpt-every", "100000",
                 "--log-every", "1", "--device", "cpu", "--out", "r", cwd=workdir)
    wait_for_step(proc.stdout, 2)
    proc.kill()
    proc.communicate(timeout=60)
    ckpts = workdir / "r" / "checkpoints"
    for stray in (".DS_Store", ".nfs000000000001", "notes.txt"):
        (ckpts / stray).write_text("not ganctl's")
    result = invoke("resume", "r", "--steps", "2")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in ckpts.iterdir()) == [
        ".DS_Store", ".nfs000000000001", "latest", "notes.txt", "step-000000002.safetensors"]
    assert (workdir / "r" / "config.json").is_file() and (workdir / "r" / "metrics.jsonl").is_file()


def test_resume_of_a_checkpoint_outside_a_run_writes_nothing(trained_run, workdir):
    victim = workdir / "victim"
    (victim / "checkpoints").mkdir(parents=True)
    files = {"config.json": '{"mine": 1}', "metrics.jsonl": "my notes\nmore notes\n",
             "data_report.json": "mine"}
    for name, text in files.items():
        (victim / name).write_text(text)
    ckpt = victim / "checkpoints" / "step-000000004.safetensors"
    ckpt.write_bytes((trained_run / "checkpoints" / "step-000000004.safetensors").read_bytes())
    before = sorted(p.name for p in victim.rglob("*"))
    assert_one_line_error(invoke("resume", ckpt, "--steps", "6"), 1, "is not in a ganctl run")
    assert sorted(p.name for p in victim.rglob("*")) == before
    for name, text in files.items():
        assert (victim / name).read_text() == text


def test_resume_shows_the_settings_it_may_change_and_refuses_the_others_by_name(run):
    """Its options are made from the config's fields: those resume may change are shown (their
    default the run's), any other of train's settings is refused naming it, as the API refuses
    it (a UsageError, which is a ConfigError)."""
    shown = set(option_blocks(help_text("resume"))) - SWITCHES
    assert {o[2:].replace("-", "_") for o in shown if o[2:].replace("-", "_") in FIELD_NAMES} \
        == set(RESUME_OVERRIDABLE)
    assert all("(the run's)" in option_blocks(help_text("resume"))[f"--{k.replace('_', '-')}"]
               for k in ("steps", "device", "eval_every", "backbone_weights", "curves"))
    result = invoke("resume", "r", "--arch", "resnet")
    assert result.exit_code == 2 and "resume cannot change 'arch'" in result.stderr
    with pytest.raises(UsageError, match="resume cannot change 'lr_g'") as caught:
        api.resume("r", lr_g=1e-3)
    assert isinstance(caught.value, ConfigError) and caught.value.option == "--lr-g"
    assert rundir.read_config(Path("r")).arch == "dcgan"  # nothing was touched

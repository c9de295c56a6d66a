"""Never lose a run: signals, kill -9 mid-write, damaged and hostile checkpoints, divergence."""

import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, invoke
from safetensors.torch import save_file

from ganctl import checkpoint, testhooks
from ganctl.guard import parse_duration

ROOT = Path(__file__).resolve().parents[1]
# checkpoints of about 8 MB: big enough for the slow-write hook (over 1 MB) to apply
MEDIUM = ["--batch-size", "8", "--g-width", "32", "--d-width", "32", "--log-every", "1",
          "--sample-every", "100000", "--device", "cpu"]


def start(*args, env=None, cwd):
    return subprocess.Popen([sys.executable, "-m", "ganctl", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT),
                                 **(env or {})})


def wait_for_step(proc, step):
    """Read progress lines until `step` is logged."""
    for line in proc.stdout:
        if line.startswith(f"step {step}/"):
            return
    raise AssertionError(f"process ended before step {step}: {proc.stderr.read()}")


def valid_steps(run_dir):
    out = []
    for path in checkpoint.list_checkpoints(run_dir / "checkpoints"):
        checkpoint.open_checkpoint(path)  # raises if damaged
        out.append(int(path.stem.split("-")[1]))
    return out


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_writes_a_checkpoint_and_resume_finishes(workdir, signum, code):
    stop_at = random.Random(signum).randint(2, 6)
    proc = start("train", *MEDIUM, "--steps", "100000", "--ckpt-every", "1000", "--out", "r",
                 cwd=workdir)
    wait_for_step(proc, stop_at)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    stopped = int(err.split("at step ")[1].split(";")[0])
    assert stopped >= stop_at
    assert f"stopped by {signal.Signals(signum).name} at step {stopped}" in err
    assert "continue with: ganctl resume r" in err
    assert valid_steps(workdir / "r") == [stopped]
    result = invoke("resume", "r", "--steps", stopped + 2)
    assert result.exit_code == 0, result.output
    assert valid_steps(workdir / "r") == [stopped, stopped + 2]


def test_second_signal_while_saving_corrupts_nothing(workdir):
    proc = start("train", *MEDIUM, "--steps", "100000", "--ckpt-every", "1000", "--out", "r",
                 env={"GANCTL_TEST_SLOW_WRITE": "3"}, cwd=workdir)
    wait_for_step(proc, 2)
    proc.send_signal(signal.SIGTERM)
    ckpt_dir = workdir / "r" / "checkpoints"
    deadline = time.time() + 60
    while not list(ckpt_dir.glob(".*.tmp-*")) and time.time() < deadline:
        time.sleep(0.02)
    assert list(ckpt_dir.glob(".*.tmp-*")), "the checkpoint write never started"
    proc.send_signal(signal.SIGINT)  # mid-write
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert len(valid_steps(workdir / "r")) == 1 and not list(ckpt_dir.glob(".*.tmp-*"))


def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one(workdir):
    proc = start("train", *MEDIUM, "--steps", "100000", "--ckpt-every", "2", "--out", "r",
                 env={"GANCTL_TEST_SLOW_WRITE": "2"}, cwd=workdir)
    ckpt_dir = workdir / "r" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline:  # the step-2 file is complete and step 4 is being written
        if (ckpt_dir / "latest").exists() and list(ckpt_dir.glob(".step-000000004*.tmp-*")):
            break
        time.sleep(0.02)
    time.sleep(random.Random(9).uniform(0.1, 1.0))
    proc.kill()
    proc.communicate(timeout=60)
    assert (ckpt_dir / "latest").read_text().strip() == "step-000000002.safetensors"
    assert valid_steps(workdir / "r") == [2]
    assert list(ckpt_dir.glob(".*.tmp-*"))  # the half-written file, never renamed into place
    assert invoke("sample", "-n", "4", "s.png", "--ckpt", "r").exit_code == 0
    result = invoke("resume", "r", "--steps", "3", "--ckpt-every", "1000")
    assert result.exit_code == 0, result.output
    assert valid_steps(workdir / "r") == [2, 3] and not list(ckpt_dir.glob(".*.tmp-*"))


# --- damaged and hostile files ---------------------------------------------------------------------

def damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(raw[: len(raw) - 1000]))
    elif how == "corrupted":
        raw[-5] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif how == "huge header":
        path.write_bytes(struct.pack("<Q", 2**62) + bytes(raw[8:]))


@pytest.mark.parametrize("how, message", [
    ("truncated", "is truncated"), ("corrupted", "does not match its checksum"),
    ("huge header", "truncated, corrupted or not a safetensors file")])
def test_damaged_checkpoint_is_refused_by_every_command(trained_run, how, message):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    damage(ckpt, how)
    for command in (["inspect", ckpt], ["sample", "x.png", "--ckpt", ckpt],
                    ["resume", ckpt, "--steps", "6"]):
        result = invoke(*command)
        assert result.exit_code == 1, result.output
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_resume_falls_back_to_the_newest_valid_checkpoint(trained_run):
    damage(trained_run / "checkpoints" / "step-000000004.safetensors", "corrupted")
    result = invoke("resume", trained_run, "--steps", "5")
    assert result.exit_code == 0, result.output
    assert "skipping step-000000004.safetensors" in result.stdout
    assert "from step-000000002.safetensors (step 2 of 5)" in result.stdout
    assert invoke("sample", "x.png", "--ckpt", trained_run).exit_code == 0


def rewrite(src: Path, dst: Path, change) -> None:
    """A checkpoint with its tensors or metadata changed, but a correct checksum."""
    header = checkpoint.read_header(src)
    tensors = checkpoint.load_tensors(src)
    meta = {k: v for k, v in header.metadata.items() if k != "ganctl.checksum"}
    change(tensors, meta)
    checkpoint.save(dst, tensors, meta.pop("ganctl.config"), int(meta.pop("ganctl.step")), meta)


@pytest.mark.parametrize("change, message", [
    (lambda t, m: t.update({"G_ema.fc.weight": t["G_ema.fc.weight"].int()}),
     "G_ema.fc.weight is torch.int32"),
    (lambda t, m: t.update({"G_ema.fc.weight": t["G_ema.fc.weight"][:3]}),
     "G_ema.fc.weight is (3, 100), the config's model needs (512, 100)"),
    (lambda t, m: t.pop("G_ema.bn0.running_mean"), "missing G_ema.bn0.running_mean"),
    (lambda t, m: m.update({"ganctl.config": json.dumps({**json.loads(m["ganctl.config"]),
                                                         "evil": 1})}), "unknown config key 'evil'"),
    (lambda t, m: m.update({"ganctl.schema": "99"}), "newer ganctl (schema 99"),
])
def test_hostile_checkpoints_are_refused(trained_run, workdir, change, message):
    bad = workdir / "bad.safetensors"
    rewrite(trained_run / "checkpoints" / "step-000000004.safetensors", bad, change)
    result = invoke("sample", "x.png", "--ckpt", bad)
    assert result.exit_code == 1 and message in result.stderr, result.output


def test_a_foreign_safetensors_file_and_a_malformed_header(workdir):
    save_file({"w": torch.zeros(2)}, str(workdir / "foreign.safetensors"), metadata={"a": "b"})
    header = json.dumps({"__metadata__": {"ganctl.schema": "2", "ganctl.step": "1",
                                          "ganctl.config": "{}"},
                         "G.w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}).encode()
    (workdir / "bad.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    for name, message in (("foreign", "not a ganctl checkpoint"), ("bad", "corrupted header")):
        result = invoke("inspect", f"{name}.safetensors")
        assert result.exit_code == 1 and message in result.stderr


def test_a_full_disk_while_saving_keeps_the_last_checkpoint(workdir, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):  # the disk is full when the second checkpoint is written
        if "step-000000004.safetensors" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    result = invoke("train", *TINY, "--out", "r")
    assert result.exit_code == 1
    assert "cannot write checkpoint" in result.stderr and "No space left on device" in result.stderr
    ckpt_dir = workdir / "r" / "checkpoints"
    assert (ckpt_dir / "latest").read_text().strip() == "step-000000002.safetensors"
    assert valid_steps(workdir / "r") == [2] and not list(ckpt_dir.glob(".*tmp*"))


# --- divergence ---------------------------------------------------------------------------------------

def test_a_nan_rolls_back_with_lower_learning_rates(workdir, monkeypatch):
    monkeypatch.setattr(testhooks, "_fired", set())
    monkeypatch.setenv("GANCTL_TEST_NAN_AT", "3")
    result = invoke("train", *TINY, "--steps", "6", "--log-every", "1", "--out", "r")
    assert result.exit_code == 0, result.output
    assert "loss_D became non-finite at step 3: rolled back to step 2, learning rates x0.5" in result.stdout
    records = [json.loads(x) for x in (workdir / "r/metrics.jsonl").read_text().splitlines()]
    events = [r for r in records if r.get("event") == "rollback"]
    assert events == [{**events[0], "step": 3, "loss": "loss_D", "to_step": 2, "lr_g": 1e-4,
                       "lr_d": 1e-4}]
    assert [r["step"] for r in records if "event" not in r] == [1, 2, 3, 4, 5, 6]
    final = checkpoint.load_tensors(workdir / "r/checkpoints/step-000000006.safetensors")
    assert float(final["opt_G.lr.0"]) == pytest.approx(1e-4)
    assert all(torch.isfinite(v.float()).all() for k, v in final.items() if k.startswith("G."))


def test_lasting_divergence_stops_with_exit_1(workdir, monkeypatch):
    monkeypatch.setenv("GANCTL_TEST_NAN_FROM", "3")
    result = invoke("train", *TINY, "--steps", "6", "--log-every", "1", "--out", "r")
    assert result.exit_code == 1
    assert ("training diverged: loss_D became non-finite at step 3, again after 3 rollbacks "
            "(learning rates now lr_g 2.5e-05, lr_d 2.5e-05)") in result.stderr
    events = [json.loads(x) for x in (workdir / "r/metrics.jsonl").read_text().splitlines()
              if "rollback" in x]
    assert [e["lr_g"] for e in events] == [1e-4, 5e-5, 2.5e-5]  # halved again each time
    assert valid_steps(workdir / "r") == [2]  # nothing non-finite was ever saved


# --- time budget, --resume, --overwrite ----------------------------------------------------------------

def test_parse_duration():
    assert parse_duration("3h30m") == 12600 and parse_duration("90s") == 90
    assert parse_duration("1d2h") == 93600 and parse_duration("0.5h") == 1800
    for bad in ("3x", "", "h", "10", "0s"):
        with pytest.raises(Exception, match="--max-time"):
            parse_duration(bad)


def test_max_time_stops_with_a_checkpoint_and_exit_0(workdir):
    result = invoke("train", *TINY, "--steps", "100000", "--ckpt-every", "50000", "--max-time",
                    "1s", "--out", "r", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["stopped"] == "max-time" and doc["step"] < 100000
    assert "time budget reached" in result.stderr
    assert valid_steps(workdir / "r") == [doc["step"]]
    assert invoke("resume", "r", "--steps", doc["step"] + 1).exit_code == 0
    bad = invoke("train", "--max-time", "soon")
    assert bad.exit_code == 1 and "not a duration" in bad.stderr


def test_train_resume_and_overwrite_flags(workdir):
    assert invoke("train", *TINY, "--out", "r").exit_code == 0
    result = invoke("train", *TINY, "--steps", "6", "--out", "r", "--resume")
    assert result.exit_code == 0, result.output
    assert valid_steps(workdir / "r")[-1] == 6
    refused = invoke("train", *TINY, "--batch-size", "4", "--out", "r", "--resume")
    assert refused.exit_code == 1 and "started with batch_size = 8" in refused.stderr
    (workdir / "r" / "mine.txt").write_text("keep me")
    result = invoke("train", *TINY, "--steps", "2", "--out", "r", "--overwrite")
    assert result.exit_code == 0, result.output
    assert valid_steps(workdir / "r") == [2] and (workdir / "r" / "mine.txt").read_text() == "keep me"
    assert invoke("train", "--out", "r", "--resume", "--overwrite").exit_code == 2
    fresh = invoke("train", *TINY, "--out", "new", "--resume")  # nothing to resume: starts
    assert fresh.exit_code == 0 and valid_steps(workdir / "new") == [2, 4]


def test_train_until_done_example(workdir):
    (workdir / "c.toml").write_text('steps = 3\nbatch_size = 8\ng_width = 8\nd_width = 8\n'
                                    'device = "cpu"\nlog_every = 1\n')
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    script = ROOT / "examples" / "train_until_done.sh"
    first = subprocess.run(["bash", str(script), "c.toml", "r", "--max-time", "1s"], cwd=workdir,
                           env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "run complete: r" in first.stdout and valid_steps(workdir / "r")[-1] == 3
    assert "time slice over" in first.stderr  # the loop ran: 1 s slices, each ending in a checkpoint


def test_inspect_no_verify_reads_the_header_alone(trained_run):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    damage(ckpt, "corrupted")
    assert invoke("inspect", ckpt).exit_code == 1
    result = invoke("inspect", ckpt, "--no-verify", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["step"] == 4


def test_sigterm_outside_training_unwinds_with_143():
    from ganctl.cli import _terminate
    with pytest.raises(SystemExit) as stop:
        _terminate(signal.SIGTERM, None)
    assert stop.value.code == 143

"""The training loop and its guards (ganctl/engine/loop.py, hooks.py, guard.py): a stop signal ends
in a checkpoint and an exact resume, a non-finite loss is rolled back with lower learning rates,
and the time budget stops a run with a checkpoint by its deadline."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
from helpers import (
    TINY,
    assert_same_tensors,
    events,
    final_tensors,
    invoke,
    nan_batches,
    signal_at,
    start,
    valid_steps,
    wait_for_step,
)

from ganctl import checkpoint, rundir
from ganctl.engine import hooks, loop
from ganctl.engine.guard import TimeBudget, parse_duration
from ganctl.engine.state import NETWORKS
from ganctl.errors import STOP_SIGNALS
from ganctl.fsutil import atomic_write

# --- stop signals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_writes_a_checkpoint_and_resume_finishes_exactly(workdir, monkeypatch, signum):
    """Every signal that ends a session (a terminal's, a user's, a scheduler's) is a clean stop:
    exit 128 + N after a checkpoint, and the resumed run equals one never stopped."""
    code = 128 + signum
    stop_at = random.Random(signum).randint(1, 3)
    signal_at(monkeypatch, stop_at, signum)
    result = invoke("train", *TINY, "--steps", "100", "--ckpt-every", "1000", "--out", "r")
    assert result.exit_code == code, result.output
    name = signal.Signals(signum).name
    assert f"stopped by {name} at step {stop_at}; checkpoint r/checkpoints/step-00000000" \
           f"{stop_at}.safetensors; continue with: ganctl resume r" in result.stderr
    assert valid_steps(workdir / "r") == [stop_at]
    result = invoke("resume", "r", "--steps", stop_at + 2, "--ckpt-every", "1000")
    assert result.exit_code == 0, result.output
    assert valid_steps(workdir / "r") == [stop_at, stop_at + 2]
    # signal_at has sent its one signal: this run is never stopped
    reference = invoke("train", *TINY, "--steps", stop_at + 2, "--ckpt-every", "1000", "--out", "ref")
    assert reference.exit_code == 0, reference.output
    assert_same_tensors(final_tensors(workdir / "r")[1], final_tensors(workdir / "ref")[1])


def test_an_ignored_sighup_stays_ignored(workdir, monkeypatch):
    """Under nohup, a closed terminal must not stop training."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        signal_at(monkeypatch, 2, signal.SIGHUP)
        result = invoke("train", *TINY, "--out", "r")
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert result.exit_code == 0, result.output
    assert valid_steps(workdir / "r") == [2, 4]


def test_a_signal_during_the_last_save_leaves_a_complete_run(workdir, monkeypatch):
    signal_at(monkeypatch, 4, signal.SIGTERM)
    result = invoke("train", *TINY, "--out", "r", "--json")
    assert result.exit_code == 0, result.output  # complete: nothing to resume
    doc = json.loads(result.stdout)
    assert doc["step"] == 4 and doc["stopped"] is None and valid_steps(workdir / "r") == [2, 4]


def test_a_stopped_run_reports_where_it_stands_and_why_in_json(workdir, monkeypatch):
    signal_at(monkeypatch, 1, signal.SIGTERM)
    result = invoke("train", *TINY, "--out", "r", "--json")
    assert result.exit_code == 143
    doc = json.loads(result.stdout)
    assert (doc["stopped"], doc["step"], doc["exit_code"]) == ("SIGTERM", 1, 143)
    assert doc["error"].startswith("stopped by SIGTERM at step 1") and doc["checkpoint"]


def test_second_signal_while_saving_corrupts_nothing(workdir, monkeypatch):
    signal_at(monkeypatch, 2, signal.SIGTERM)
    sent = []

    def write_under_fire(path, *chunks):  # Ctrl-C and another SIGTERM while the file is written
        if path.suffix == ".safetensors" and not sent:
            sent.append(path)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
        atomic_write(path, *chunks)

    monkeypatch.setattr(checkpoint.write, "atomic_write", write_under_fire)
    result = invoke("train", *TINY, "--steps", "100", "--ckpt-every", "1000", "--out", "r")
    assert result.exit_code == 143, result.output
    assert sent and valid_steps(workdir / "r") == [2]
    assert not list((workdir / "r" / "checkpoints").glob(".*.tmp-*"))


def test_sigterm_to_a_process_stops_it_after_a_checkpoint_and_a_run_in_use_is_left_alone(workdir):
    """One real process: while it trains, resume and --overwrite of its run are refused and
    delete nothing; SIGTERM then stops it with 143, a checkpoint and the JSON of where it stands."""
    proc = start("train", *TINY[:-4], "--steps", "100000", "--ckpt-every", "5", "--keep", "0",
                 "--log-every", "1", "--device", "cpu", "--out", "r", "--json", cwd=workdir)
    wait_for_step(proc.stderr, 6)  # with --json, progress goes to stderr
    before = {p.name for p in (workdir / "r" / "checkpoints").glob("step-*")}
    result = invoke("resume", "r", "--steps", "100001")
    assert result.exit_code == 1 and "being trained by another ganctl process" in result.stderr
    result = invoke("train", *TINY, "--out", "r", "--overwrite")
    assert result.exit_code == 1 and "being trained by another ganctl process" in result.stderr
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    doc = json.loads(out)
    stopped = doc["step"]
    assert doc["stopped"] == "SIGTERM" and stopped >= 6 and doc["checkpoint"].endswith(
        f"step-{stopped:09d}.safetensors")
    assert f"stopped by SIGTERM at step {stopped}" in err and "continue with: ganctl resume r" in err
    assert before and before <= {p.name for p in (workdir / "r" / "checkpoints").glob("step-*")}
    assert (workdir / "r" / "config.json").is_file() and (workdir / "r" / "metrics.jsonl").is_file()
    assert valid_steps(workdir / "r")[-1] == stopped
    result = invoke("resume", "r", "--steps", stopped + 1)
    assert result.exit_code == 0, result.output


# --- divergence -----------------------------------------------------------------------------------

def test_a_nan_rolls_back_with_lower_learning_rates(workdir, monkeypatch):
    nan_batches(monkeypatch, steps={3})
    result = invoke("train", *TINY, "--steps", "6", "--log-every", "1", "--out", "r")
    assert result.exit_code == 0, result.output
    assert "loss_D became non-finite at step 3: rolled back to step 2, learning rates x0.5" in result.stdout
    records = rundir.read_metrics(workdir / "r")
    rollbacks = [r for r in records if r.get("event") == "rollback"]
    assert rollbacks == [{**rollbacks[0], "step": 3, "loss": "loss_D", "to_step": 2, "lr_g": 2.5e-4,
                          "lr_d": 2.5e-4}]  # the shapes preset's 5e-4, halved
    assert [r["step"] for r in records if "event" not in r] == [1, 2, 3, 4, 5, 6]
    final = checkpoint.load_tensors(workdir / "r/checkpoints/step-000000006.safetensors")
    assert float(final["opt_G.lr.0"]) == pytest.approx(2.5e-4)
    assert all(final[k].float().isfinite().all() for k in final if k.startswith(NETWORKS))


def test_two_rollbacks_to_the_same_checkpoint_recover(workdir, monkeypatch):
    nan_batches(monkeypatch, steps={3, 4})  # step 3 breaks, then (after one) step 4
    result = invoke("train", *TINY, "--steps", "6", "--log-every", "1", "--out", "r")
    assert result.exit_code == 0, result.output
    assert [(e["step"], e["to_step"], e["lr_g"]) for e in events(workdir / "r")] == [
        (3, 2, 2.5e-4), (4, 2, 1.25e-4)]
    assert valid_steps(workdir / "r")[-1] == 6


def test_separate_spikes_each_recover(workdir, monkeypatch):
    nan_batches(monkeypatch, steps={3, 5, 7, 9})  # four spikes, a checkpoint between each
    result = invoke("train", *TINY, "--steps", "10", "--log-every", "1", "--out", "r")
    assert result.exit_code == 0, result.output
    assert [e["to_step"] for e in events(workdir / "r")] == [2, 4, 6, 8]


def test_lasting_divergence_stops_with_exit_1(workdir, monkeypatch):
    nan_batches(monkeypatch, start_at=3)
    result = invoke("train", *TINY, "--steps", "6", "--log-every", "1", "--out", "r")
    assert result.exit_code == 1
    assert ("training diverged: loss_D became non-finite at step 3, again after 3 rollbacks "
            "(learning rates now lr_g 6.25e-05, lr_d 6.25e-05)") in result.stderr
    rollbacks = [e for e in events(workdir / "r") if e["event"] == "rollback"]
    assert [e["lr_g"] for e in rollbacks] == [2.5e-4, 1.25e-4, 6.25e-5]  # halved each time
    assert valid_steps(workdir / "r") == [2]  # nothing non-finite was ever saved


# --- time budget ----------------------------------------------------------------------------------

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


def test_a_20_s_budget_trains_for_most_of_its_20_s(workdir, monkeypatch):
    """On an injected clock (time.monotonic, which the budget and the deadline read): a 3 s first
    step (warm-up), then steps of 0.5 s, and a checkpoint takes the 1 s the budget guesses.
    Checkpoints are 2,000 steps apart, far beyond the budget: it trains while one more step, its
    checkpoint and the last curves still fit, then checkpoints off-schedule by the deadline and
    exits 0."""
    first_s, step_s, start = 3.0, 0.5, 1000.0
    clock = [start]
    ended: dict[int, float] = {}  # step -> when it ended
    saved: list[float] = []  # when each checkpoint was written
    real_step, real_save = loop.train_step, hooks.save_checkpoint

    def timed_step(state, phases):
        stats = real_step(state, phases)
        clock[0] += first_s if state.step == 1 else step_s
        ended[state.step] = clock[0]
        return stats

    def timed_save(*args, **kwargs):
        path = real_save(*args, **kwargs)
        clock[0] += TimeBudget.SAVE_GUESS
        saved.append(clock[0])
        return path

    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(loop, "train_step", timed_step)
    monkeypatch.setattr(hooks, "save_checkpoint", timed_save)
    result = invoke("train", *TINY, "--steps", "1000000", "--ckpt-every", "2000", "--sample-every",
                    "2000", "--log-every", "100", "--max-time", "20s", "--out", "r", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    last, deadline = doc["step"], start + 20.0
    assert doc["stopped"] == "max-time" and valid_steps(workdir / "r") == [last]
    assert saved == [ended[last] + TimeBudget.SAVE_GUESS] and saved[0] <= deadline  # in time
    one_more = step_s + TimeBudget.SAVE_GUESS + TimeBudget.VIEW_GUESS  # a step, its save, curves
    assert ended[last - 1] + one_more <= deadline < ended[last] + one_more  # not a step early
    assert (last, ended[last] - start) == (32, 18.5)  # 18.5 of the 20 s trained
    assert rundir.read_metrics(workdir / "r")[-1]["step"] == last  # its last step logged


def test_the_time_budget_trains_up_to_the_deadline_minus_a_step_and_a_checkpoint(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    budget = TimeBudget(deadline=110.0, start_step=0)  # 10 s from "now"
    clock[0] += 2.0  # the first step: 2 s of warm-up, which stands in for a step until a second
    assert not budget.exhausted(1)  # 102 + 2 + 1 + 0.5 (a checkpoint and curves, guessed) <= 110
    budget.pause(0.5, "save")  # a checkpoint took 0.5 s: not step time
    budget.pause(0.25, "view")  # so did redrawing curves.png, which follows the last checkpoint
    clock[0] += 0.75
    step = 1
    while True:  # steps of 0.25 s
        step += 1
        clock[0] += 0.25
        if budget.exhausted(step):
            break
    # at 109.0 one more step, a checkpoint and a redraw (0.25 + 0.5 + 0.25) still fit by 110
    assert (step, clock[0]) == (27, 109.25)
    clock[0] = 105.0
    assert not budget.exhausted(step)
    budget.pause(5.0, "eval")  # an evaluation due next takes 5 s more
    assert budget.exhausted(step, eval_next=True)
    assert not TimeBudget(None, 0).exhausted(1)


def test_a_run_stopped_by_max_time_logs_its_last_step_and_draws_its_curves(workdir):
    result = invoke("train", *TINY, "--curves", "--steps", "1000000", "--log-every", "100000",
                    "--max-time", "3s", "--out", "r", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["stopped"] == "max-time"
    from ganctl.rundir import read_metrics  # noqa: PLC0415
    assert [r["step"] for r in read_metrics(Path("r"))] == [doc["step"]]
    assert Path("r/curves.png").is_file()

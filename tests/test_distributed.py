"""Training on several processes (issue 14): gloo on the CPU, two processes, under torchrun and
under `ganctl train --gpus 2` (torch's launcher API)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, assert_one_line_error, invoke, write_feature_net
from safetensors.torch import load_file

from ganctl import distributed
from ganctl.data import Batches
from ganctl.errors import ConfigError

# a run whose steps take milliseconds: 8-channel DCGAN at 32x32 on the CPU, global batch 8
TINY = ["--device", "cpu", "--batch-size", "8", "--g-width", "8", "--d-width", "8",
        "--log-every", "1", "--sample-every", "1000", "--ckpt-every", "1000"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _run(*args: object, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _start(*args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ganctl", *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the ranks of a launcher), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _wait_for(predicate, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)


def _training_ranks() -> tuple[subprocess.Popen, list[int]]:
    """`ganctl train --gpus 2` into ./r, once both ranks train: the launcher and the ranks."""
    proc = _start("train", *TINY, "--steps", "100000", "--gpus", "2", "--out", "r")
    try:
        _wait_for(lambda: Path("r/metrics.jsonl").exists()
                  and len(Path("r/metrics.jsonl").read_text().splitlines()) >= 2)
        ranks = _children(proc.pid)
        assert len(ranks) == 2, ranks
    except BaseException:
        proc.kill()
        raise
    return proc, ranks


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(path).items() if k.split(".")[0] in ("G", "D", "G_ema")}


# --- the pieces, in one process ------------------------------------------------------------------

@pytest.mark.parametrize("resident", [True, False])
def test_ranks_draw_disjoint_shares_that_make_the_one_process_batch(resident):
    """Each rank takes its rows of the global batch: disjoint, and together (in rank order)
    the batch one process draws, over an epoch's end too."""
    n = 40
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()

    def ids(batches: Batches) -> list[int]:
        return ((batches.next().x[:, 0, 0, 0] + 1) * 127.5).round().long().tolist()

    one = Batches(images, 8, seed=3, device=torch.device("cpu"), resident=resident)
    ranks = [Batches(images, 8, seed=3, device=torch.device("cpu"), resident=resident, rank=r,
                     world=2) for r in range(2)]
    try:
        for _ in range(7):  # 40 images, batch 8: an epoch ends after 5
            whole = ids(one)
            shares = [ids(b) for b in ranks]
            assert shares[0] + shares[1] == whole
            assert not set(shares[0]) & set(shares[1])
        assert ranks[0].state() == ranks[1].state() == one.state()  # the position is global
    finally:
        for b in (one, *ranks):
            b.close()


def test_the_global_batch_must_divide_among_the_processes(monkeypatch):
    monkeypatch.setattr(distributed.WORLD, "size", 3)
    assert distributed.split_batch(9) == 3
    with pytest.raises(ConfigError, match="--batch-size 8 is the global batch and must divide "
                                          "among the 3 processes; use a multiple of 3"):
        distributed.split_batch(8)


def test_gpus_is_taken_out_of_the_command_line_it_starts():
    argv = ["train", "--gpus", "2", "--steps", "9", "--gpus=4", "--out", "r"]
    assert distributed.without_option(argv, "--gpus") == ["train", "--steps", "9", "--out", "r"]


def test_sync_bn_is_recorded_and_gpus_one_trains_in_this_process(workdir):
    result = invoke("train", *TINY, "--steps", "2", "--gpus", "1", "--sync-bn", "--out", "r")
    assert result.exit_code == 0, result.output
    assert json.loads(Path("r/config.json").read_text())["sync_bn"] is True


@pytest.mark.parametrize(("env", "fragment"), [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers"),
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK 5 and LOCAL_RANK 0 must lie in 0..1 for WORLD_SIZE 2"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": ""}, "WORLD_SIZE 2 is set but MASTER_ADDR is not"),
])
def test_bad_launcher_variables_are_a_one_line_error(workdir, monkeypatch, env, fragment):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert_one_line_error(invoke("train", *TINY, "--steps", "2", "--out", "r"), 1, fragment)
    assert not Path("r").exists()


def test_gpus_checks_what_it_can_before_starting_processes(workdir):
    assert_one_line_error(invoke("train", *TINY, "--steps", "2", "--gpus", "2", "--batch-size", "7"),
                          2, "--batch-size 7 is the global batch and must divide among the 2")
    if not torch.cuda.is_available():
        assert_one_line_error(invoke("train", "--gpus", "2", "--device", "cuda"), 2,
                              "--device cuda but no CUDA GPU is here")


# --- two processes ------------------------------------------------------------------------------

def test_two_processes_under_torchrun_train_as_one_with_the_same_global_batch(workdir, tmp_path,
                                                                             monkeypatch):
    """torchrun, 2 gloo processes, BatchNorm synchronised: one run directory, rank 0's output
    alone, and after 3 steps the weights of a one-process run with the same global batch; the
    evaluation at step 3 (each process makes half the fakes) scores as the one-process one."""
    monkeypatch.setenv("GANCTL_INCEPTION", str(write_feature_net(tmp_path / "nets" / "f.pt")))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    steps = ["--steps", "3", "--ckpt-every", "3", "--eval-every", "3", "--eval-num", "24",
             "--eval-num-real", "48"]
    done = _run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",  # free port
                "-m", "ganctl", "train",
                *TINY, *steps, "--sync-bn", "--out", "two")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "batch 8 (4 per process on 2 processes, BatchNorm synchronised)" in done.stdout
    assert done.stdout.count("done: step 3/3") == 1  # the other rank is silent
    result = invoke("train", *TINY, *steps, "--out", "one")
    assert result.exit_code == 0, result.output
    assert sorted(p.parent.name for p in workdir.rglob("config.json")) == ["one", "two"]
    assert [p.name for p in Path("two/checkpoints").glob("*.safetensors")] == [
        "step-000000003.safetensors"]
    assert len(Path("two/metrics.jsonl").read_text().splitlines()) == 4  # one writer: 3 steps, 1 eval
    one, two = (_weights(Path(r) / "checkpoints" / "step-000000003.safetensors")
                for r in ("one", "two"))
    assert one.keys() == two.keys()
    for k in one:
        assert torch.allclose(one[k].float(), two[k].float(), atol=1e-5, rtol=1e-4), k
    scores = [[json.loads(line) for line in Path(r, "metrics.jsonl").read_text().splitlines()
               if '"eval"' in line] for r in ("one", "two")]
    assert len(scores[0]) == len(scores[1]) == 1
    assert scores[1][0]["num_fake"] == 24 and scores[1][0]["fid"] == pytest.approx(
        scores[0][0]["fid"], rel=1e-3)


def test_a_nan_on_one_rank_rolls_every_rank_back_and_the_run_goes_on(workdir):
    """Rank 1's batch of step 4 is NaN: the averaged gradients carry it to both ranks, both roll
    back to the checkpoint of step 3 together (no rank left waiting in an all-reduce), and the
    run ends at its last step with finite weights."""
    env = {**_env(), "GANCTL_TEST_NAN": "1:4"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2",
                           str(ROOT / "tests" / "launch.py"), "train", *TINY, "--steps", "6",
                           "--ckpt-every", "3", "--out", "r"], env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in Path("r/metrics.jsonl").read_text().splitlines()]
    rollbacks = [e for e in events if e.get("event") == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["step"] == 4 and rollbacks[0]["to_step"] == 3
    assert "rolled back to step 3" in done.stdout + done.stderr
    weights = _weights(Path("r/checkpoints/step-000000006.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_sigterm_to_one_rank_stops_both_after_one_checkpoint_and_it_resumes_anywhere(workdir):
    proc, ranks = _training_ranks()
    try:
        os.kill(ranks[1], signal.SIGTERM)  # one rank only: the other hears of it and stops too
        out, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    saved = list(Path("r/checkpoints").glob("*.safetensors"))
    assert len(saved) == 1
    step = int(saved[0].stem.split("-")[1])
    assert f"stopped by SIGTERM at step {step}" in err
    # on one process, then on two again
    result = invoke("resume", "r", "--steps", step + 2)
    assert result.exit_code == 0, result.output
    assert "this run trained on 2 processes; it continues on 1 process" in result.output
    done = _run("-m", "ganctl", "resume", "r", "--steps", step + 4, "--gpus", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "this run trained on 1 process; it continues on 2 processes" in done.stdout
    assert f"done: step {step + 4}/{step + 4}" in done.stdout


def test_a_rank_that_dies_ends_the_run_within_a_minute(workdir):
    proc, ranks = _training_ranks()
    try:
        started = time.monotonic()
        os.kill(ranks[0], signal.SIGKILL)
        proc.communicate(timeout=60)
        assert time.monotonic() - started < 60
    finally:
        proc.kill()
    assert proc.returncode not in (0, None)
    _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in ranks), 30)


def test_ranks_stop_with_a_checkpoint_when_their_launcher_is_killed(workdir):
    """kill -9 of `--gpus 2` (the OOM killer, a scheduler) must not leave its ranks training
    a run nobody watches: they get SIGTERM, stop together and checkpoint."""
    proc, ranks = _training_ranks()
    try:
        proc.kill()
        proc.communicate(timeout=30)
        _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in ranks), 60)
    finally:
        proc.kill()
    saved = list(Path("r/checkpoints").glob("*.safetensors"))
    assert len(saved) == 1  # the stop's own checkpoint (--ckpt-every is 1000)


def test_a_signal_during_the_stop_vote_is_kept_for_the_next_step(workdir, monkeypatch):
    """The race a first-time user hit: SIGTERM landed while a rank waited in the all-reduce that
    decides whether to stop; the vote (taken before it) said no, and the rank then forgot its
    signal, so the run went on. Now the signal is voted on at the next step."""
    from types import SimpleNamespace  # noqa: PLC0415

    from ganctl.engine import loop  # noqa: PLC0415

    votes = []

    def agree(*values):
        votes.append(values)
        if len(votes) == 1:  # the signal arrives while this first vote is under way
            os.kill(os.getpid(), signal.SIGTERM)
            return [0] * len(values)  # ... the others voted before it: no stop yet
        return list(values)

    monkeypatch.setattr(loop, "WORLD", SimpleNamespace(active=True, writer=True, size=2, rank=0))
    monkeypatch.setattr(loop, "agree", agree)
    monkeypatch.setattr(loop, "barrier", lambda: None)
    result = invoke("train", *TINY, "--steps", "50", "--out", "r")
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert "stopped by SIGTERM at step 2" in result.stderr
    assert [p.name for p in Path("r/checkpoints").glob("*.safetensors")] == ["step-000000002.safetensors"]

"""Training on several processes (issue 14): gloo on the CPU, two processes, under torchrun and
under `ganctl train --gpus 2` (torch's launcher API)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import helpers
import pytest
import torch
from helpers import (
    ROOT,
    assert_clean,
    assert_one_line_error,
    final_tensors,
    invoke,
    nan_batches,
    valid_steps,
    write_feature_net,
)
from safetensors.torch import load_file

from ganctl import augment, distributed
from ganctl.augment import ada
from ganctl.data import Batches
from ganctl.errors import ConfigError

# a run whose steps take milliseconds: 8-channel DCGAN at 32x32 on the CPU, global batch 8
TINY = ["--device", "cpu", "--batch-size", "8", "--g-width", "8", "--d-width", "8",
        "--log-every", "1", "--sample-every", "1000", "--ckpt-every", "1000", "--no-curves"]


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
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "http"},
     "MASTER_PORT='http' must be a TCP port, 1 to 65535"),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "GANCTL_DIST_TIMEOUT": "1m"},
     "GANCTL_DIST_TIMEOUT='1m' must be a positive number of seconds, at most 2592000 (30 days; default 600)"),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
      "GANCTL_DIST_TIMEOUT": "99999999999999999999"}, "must be a positive number of seconds, at most"),
    ({"WORLD_SIZE": "99999999999999999999"}, "WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE 0 must be 1 or more"),
    ({"WORLD_SIZE": "-1"}, "WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers from 0"),
])
def test_bad_launcher_variables_are_a_one_line_error(workdir, monkeypatch, env, fragment):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert_one_line_error(invoke("train", *TINY, "--steps", "2", "--out", "r"), 1, fragment)
    assert not Path("r").exists()


@pytest.mark.parametrize(("error", "says"), [
    (torch.distributed.DistStoreError("Timed out after 4 seconds waiting for clients. 1/2 clients "
                                      "joined."),
     "rank 0 of 2 waited 3 s (GANCTL_DIST_TIMEOUT) for the other ranks to join the rendezvous at "
     "MASTER_ADDR:MASTER_PORT 10.0.0.1:29500 (1 of 2 joined); start all 2 ranks with the same "
     "MASTER_ADDR and MASTER_PORT, or give them longer with GANCTL_DIST_TIMEOUT=<seconds>"),
    (torch.distributed.DistNetworkError("The client socket has timed out after 3000ms while trying "
                                        "to connect to (10.0.0.1, 29500)."),
     "rank 0 of 2 waited 3 s (GANCTL_DIST_TIMEOUT) for an answer from the rendezvous's TCP store "
     "at MASTER_ADDR:MASTER_PORT 10.0.0.1:29500"),
    (torch.distributed.DistNetworkError("The server socket has failed to listen on any local network "
                                        "address. port: 29500, useIpv6: false, code: -98, name: "
                                        "EADDRINUSE, message: address already in use"),
     "rank 0 of 2: the rendezvous port MASTER_PORT 29500 is in use on this machine; choose a free "
     "one"),
    (torch.distributed.DistBackendError("NCCL error in: ProcessGroupNCCL.cpp:1, unhandled system "
                                        "error\nLast error: socket\nframe #0: c10::Error"),
     "rank 0 of 2 could not join the others at MASTER_ADDR:MASTER_PORT 10.0.0.1:29500 "
     "(DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1, unhandled system error Last error"),
])
def test_a_failed_join_is_one_line_that_says_what_rank_waited_for(error, says):
    """torch's start-up errors (the store not there in time, its port taken, NCCL's), as one
    line: which rank, what it waited for, for how long, and the variable that sets it."""
    message = str(distributed.world._join_failed(error, 0, 2, "10.0.0.1:29500", 3.0))
    assert message.startswith(says) and "\n" not in message


@pytest.mark.parametrize(("codes", "says"), [
    ({1: -9, 0: 143}, "rank 1 of 2 was killed by SIGKILL, and the run stopped on every process; "
                      "fix that and run the command again"),
    ({0: 143, 1: 1}, "rank 1 of 2 exited with code 1 (its error is above), and the run stopped"),
    ({0: 1, 1: -9}, "rank 1 of 2 was killed by SIGKILL, and"),  # rank 0 lost it in a collective
    ({0: 1, 1: 1}, "all 2 processes exited with code 1; their own errors above say why"),
    ({0: -9, 1: -9}, "all 2 processes were killed by SIGKILL; their own errors"),
])
def test_the_launcher_names_the_rank_that_failed_first(codes, says):
    assert str(distributed.reports.ranks_failed(codes, 2)).startswith(says)


def test_a_stop_signal_acts_while_the_group_is_being_joined():
    """torch waits for the other ranks in C++, where no Python signal handler runs: the join
    runs on a helper thread, so a launcher's SIGTERM (another rank died) or Ctrl-C stops a rank
    at once instead of after GANCTL_DIST_TIMEOUT."""
    class Stop(Exception):
        pass

    def stop(signum, frame):
        raise Stop

    previous = signal.signal(signal.SIGALRM, stop)
    started = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Stop):
            distributed.world._waiting_for_signals(threading.Event().wait, 30)  # a join that never ends
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < 5


def test_gpus_checks_what_it_can_before_starting_processes(workdir):
    assert_one_line_error(invoke("train", *TINY, "--steps", "2", "--gpus", "2", "--batch-size", "7"),
                          2, "Invalid value for --batch-size: batch size 7 is the global batch and "
                          "must divide among the 2")
    if not torch.cuda.is_available():
        assert_one_line_error(invoke("train", "--gpus", "2", "--device", "cuda"), 2,
                              "--device cuda but no CUDA GPU is here")


def test_gpus_with_batch_size_auto_is_refused_before_any_process_starts(workdir, monkeypatch):
    """auto measures one process: with --gpus N it is a bad command line at once, not an error
    from each of N processes after they loaded the data."""
    from ganctl import distributed

    def no_launch(*args: object) -> int:
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(distributed, "launch", no_launch)
    for auto in ("auto", "AUTO"):
        result = invoke("train", "--gpus", "2", "--batch-size", auto, "--device", "cpu")
        assert_one_line_error(result, 2, "auto finds a batch size for one process",
                              "divisible by 2")
        assert_clean(result)
    result = invoke("train", "--gpus", "2", "--batch-size", "lots", "--device", "cpu", "--json")
    assert_one_line_error(result, 2, "'lots' is not a whole number")
    assert json.loads(result.stdout)["exit_code"] == 2
    assert not Path("runs").exists()
    # what the processes would resolve is checked once, here: a config file's auto, a default
    # batch that does not divide among them, a bad value in the file
    Path("auto.toml").write_text('batch_size = "auto"\n')
    result = invoke("train", "--gpus", "2", "--config", "auto.toml", "--device", "cpu")
    assert_one_line_error(result, 2, "Invalid value for batch_size in auto.toml: auto finds a batch "
                                     "size for one process")
    result = invoke("train", "--gpus", "3", "--device", "cpu")  # shapes' batch 64
    assert_one_line_error(result, 2, "Invalid value for the default batch size: batch size 64 is "
                                     "the global batch", "multiple of 3 (--batch-size)")
    Path("bad.toml").write_text("lr_g = -1\n")
    assert_one_line_error(invoke("train", "--gpus", "2", "--config", "bad.toml"), 1, "lr_g")
    assert not Path("runs").exists()


# --- two processes ------------------------------------------------------------------------------

def test_a_rank_whose_peer_never_joins_fails_in_one_line(workdir):
    """Rank 0 alone (it hosts the rendezvous's TCP store, and waits for rank 1) and, on
    another port, rank 1 alone (nobody answers it): each ends after GANCTL_DIST_TIMEOUT with one
    line, no C++ backtrace of torch's retries on the terminal, and no run directory."""
    procs = {}
    for rank in (0, 1):
        port = distributed.free_port()
        env = {**_env(), "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GANCTL_DIST_TIMEOUT": "1"}
        procs[rank] = port, subprocess.Popen(
            [sys.executable, "-m", "ganctl", "train", *TINY, "--steps", "2", "--out", f"r{rank}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    waited_for = {0: "the other ranks to join the rendezvous at MASTER_ADDR:MASTER_PORT 127.0.0.1:",
                  1: "an answer from the rendezvous's TCP store at MASTER_ADDR:MASTER_PORT 127.0.0.1:"}
    for rank, (port, proc) in procs.items():
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == 1, err[-3000:]
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
        assert lines[0].startswith(f"error: rank {rank} of 2 waited 1 s (GANCTL_DIST_TIMEOUT) for "), err
        assert f"{waited_for[rank]}{port}" in err
        assert "give them longer with GANCTL_DIST_TIMEOUT=<seconds>" in err
        assert not Path(f"r{rank}").exists()


def test_a_rank_that_dies_joining_ends_gpus_in_one_line_after_the_ranks_own(workdir):
    """Rank 1 is killed while it joins: the launcher stops rank 0 (which stops at once, though
    it waits for rank 1 in torch's C++) and ends with one line naming rank 1; none of torch's
    own report (its elastic agent's log, ChildFailedError, C++ frames) reaches the terminal."""
    env = {**_env(), "GANCTL_TEST_DIE_JOINING": "1:1", "GANCTL_DIST_TIMEOUT": "300"}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "launch.py"), "train", *TINY,
                           "--steps", "2", "--gpus", "2", "--out", "r"], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: rank 1 of 2 was killed by SIGKILL, and the run stopped on "
                                "every process; fix that"), done.stderr[-3000:]
    assert set(lines[:-1]) <= {"stopped by SIGTERM before training started; no checkpoint was written"}


# Two gloo processes started once for the module (torch.multiprocessing), as torchrun would
# (env:// variables), each running the commands in-process: starting a process costs more than
# the work. torch's elastic launcher (torchrun's) starts the ranks of the --gpus tests below.
SEEDS = (3, 1, 2)  # seed 3: D 6e-4 apart after 2 steps when the variance was E[x²] - mean²
STEPS = ["--steps", "3", "--ckpt-every", "3"]
# 3 updates of p by 0.08 from 0.5: it ends elsewhere, whichever way each goes
ADA = ["--steps", "6", "--ckpt-every", "6", "--sync-bn",
       "--augment", "ada:kimg=0.2,interval=2,start=0.5,pipe=bgcfnc"]
EVAL = ["--eval-every", "3", "--eval-num", "24", "--eval-num-real", "48"]  # the first seed's run
# a tiny StyleGAN2 whose 4 steps run every phase: D, lazy R1, G and path length (every 2)
STYLEGAN2 = ["--arch", "stylegan2", "--z-dim", "8", "--w-dim", "8", "--channel-base", "256",
             "--r1", "1", "--r1-every", "2", "--pl-every", "2", "--steps", "4", "--ckpt-every", "4"]


def _rank_worker(rank: int, port: int, root: Path) -> None:
    """One rank: a tiny --sync-bn run per seed into root/two-SEED (the first evaluated), then
    its GlooSyncBatchNorm errors; what each command printed and the errors in root/rank-R.json."""
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    runs = {}
    for seed in SEEDS:
        result = invoke("train", *TINY, *STEPS, *(EVAL if seed == SEEDS[0] else []), "--seed", seed,
                        "--sync-bn", "--out", root / f"two-{seed}")
        assert result.exit_code == 0, result.output  # the other rank is stopped too
        runs[seed] = {"stdout": result.stdout, "stderr": result.stderr}
    result = invoke("resume", root / "one-process", "--steps", "4")  # trained on one process
    assert result.exit_code == 0, result.output
    runs["resume"] = {"stdout": result.stdout, "stderr": result.stderr}
    result = invoke("train", *TINY, *STYLEGAN2, "--out", root / "stylegan2")
    assert result.exit_code == 0, result.output
    runs["stylegan2"] = {"stdout": result.stdout, "stderr": result.stderr}
    with pytest.MonkeyPatch.context() as patch:  # an adaptive augmentation's feedback, summed
        patch.setitem(augment.KINDS, "toy", lambda options: helpers.ToyAdaptive())
        result = invoke("train", *TINY, "--steps", "4", "--augment", "toy", "--out", root / "toy")
    assert result.exit_code == 0, result.output
    runs["toy"] = {"fed back": helpers.seen}
    made: list[augment.Augmentation] = []  # adaptive augmentation: each rank's p at the end
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(augment.KINDS, "ada", lambda options: made.append(ada.make(options)) or made[-1])
        result = invoke("train", *TINY, *ADA, "--out", root / "ada")
    assert result.exit_code == 0, result.output
    runs["ada"] = {"p": float(made[-1].p), "rt": float(made[-1].rt)}
    with pytest.MonkeyPatch.context() as patch:
        if rank == 1:  # rank 1's real batch of step 4 is NaN
            nan_batches(patch, steps={4})
        result = invoke("train", *TINY, "--steps", "6", "--ckpt-every", "3", "--out", root / "nan")
    assert result.exit_code == 0, result.output
    runs["nan"] = {"stdout": result.stdout, "stderr": result.stderr}
    (root / f"rank-{rank}.json").write_text(json.dumps({"runs": runs, "bn": _sync_bn_errors(rank)}))


def _sync_bn_errors(rank: int) -> dict[str, float]:
    """GlooSyncBatchNorm on this rank's half of a batch against BatchNorm (in float64) on the
    whole batch, over seeds, a channel with mean 100 and spread 1 among them: the largest
    difference of the outputs, the input, weight and bias gradients and the running statistics,
    each relative to the largest value."""
    worst: dict[str, float] = {}
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(8, 3, 4, 4, generator=gen)
        x[:, 1] = 100 + torch.randn(8, 4, 4, generator=gen)
        x[:, 2] *= 10
        upstream = torch.randn(8, 3, 4, 4, generator=gen)
        exact = torch.nn.BatchNorm2d(3)
        with torch.no_grad():
            exact.weight.uniform_(0.5, 1.5, generator=gen)
            exact.bias.uniform_(-0.5, 0.5, generator=gen)
        exact.double()
        whole = x.double().requires_grad_()
        want = exact(whole)
        (want * upstream.double()).sum().backward()
        synced = distributed.GlooSyncBatchNorm(3)
        with torch.no_grad():
            synced.weight.copy_(exact.weight)
            synced.bias.copy_(exact.bias)
        rows = slice(4 * rank, 4 * rank + 4)
        half = x[rows].clone().requires_grad_()
        y = synced(half)
        (y * upstream[rows]).sum().backward()
        for grad in (synced.weight.grad, synced.bias.grad):
            torch.distributed.all_reduce(grad)  # the whole batch's loss: the ranks' summed
        with torch.no_grad():
            pairs = {"output": (y, want[rows]), "input grad": (half.grad, whole.grad[rows]),
                     "weight grad": (synced.weight.grad, exact.weight.grad),
                     "bias grad": (synced.bias.grad, exact.bias.grad),
                     "running mean": (synced.running_mean, exact.running_mean),
                     "running var": (synced.running_var, exact.running_var)}
        for name, (got, expected) in pairs.items():
            error = float((got.detach().double() - expected).abs().max() / expected.abs().max())
            worst[name] = max(worst.get(name, 0.0), error)
    return worst


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("two-ranks")
    env = {"GANCTL_DATA_DIR": str(root / "data"), "GANCTL_CACHE_DIR": str(root / "cache"),
           "GANCTL_INCEPTION": str(write_feature_net(root / "nets" / "f.pt")),
           "XDG_CACHE_HOME": str(root / "xdg"), "GANCTL_DIST_TIMEOUT": "120"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # the ranks inherit them
    try:
        result = invoke("train", *TINY, "--steps", "2", "--out", root / "one-process")
        assert result.exit_code == 0, result.output
        torch.multiprocessing.spawn(_rank_worker, args=(distributed.free_port(), root), nprocs=2)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return root


def _assert_same_weights(one: Path, two: Path) -> None:
    """G, D and G_ema of two runs' step-3 checkpoints agree to 1e-5."""
    weights = [_weights(r / "checkpoints" / "step-000000003.safetensors") for r in (one, two)]
    assert weights[0].keys() == weights[1].keys()
    assert {k.split(".")[0] for k in weights[0]} == {"G", "D", "G_ema"}
    for k in weights[0]:
        torch.testing.assert_close(weights[1][k].float(), weights[0][k].float(), atol=1e-5, rtol=0,
                                   msg=lambda m, k=k: f"{k}: {m}")


def test_two_processes_train_as_one_with_the_same_global_batch(two_ranks, workdir, monkeypatch):
    """2 gloo processes, BatchNorm synchronised: one run directory, rank 0's output alone, and
    after 3 steps the weights of a one-process run with the same global batch; the evaluation
    at step 3 (each process makes half the fakes) scores as the one-process one."""
    seed = SEEDS[0]
    printed = [json.loads((two_ranks / f"rank-{r}.json").read_text())["runs"][str(seed)]
               for r in (0, 1)]
    assert "batch 8 (4 per process on 2 processes, BatchNorm synchronised)" in printed[0]["stdout"]
    assert "done: step 3/3" in printed[0]["stdout"]
    assert printed[1] == {"stdout": "", "stderr": ""}  # the other rank is silent
    two = two_ranks / f"two-{seed}"
    assert sorted(p.parent.name for p in two_ranks.rglob("config.json")) == [
        "ada", "nan", "one-process", "stylegan2", "toy", *(f"two-{s}" for s in sorted(SEEDS))]
    assert [p.name for p in (two / "checkpoints").glob("*.safetensors")] == [
        "step-000000003.safetensors"]
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 4  # one writer: 3 steps, 1 eval
    monkeypatch.setenv("GANCTL_INCEPTION", str(two_ranks / "nets" / "f.pt"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(workdir / "xdg"))
    result = invoke("train", *TINY, *STEPS, *EVAL, "--seed", seed, "--out", "one")
    assert result.exit_code == 0, result.output
    _assert_same_weights(Path("one"), two)
    scores = [[json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()
               if '"eval"' in line] for r in (Path("one"), two)]
    assert len(scores[0]) == len(scores[1]) == 1
    assert scores[1][0]["num_fake"] == 24 and scores[1][0]["fid"] == pytest.approx(
        scores[0][0]["fid"], rel=1e-3)


@pytest.mark.parametrize("seed", SEEDS[1:])
def test_two_processes_with_sync_bn_train_as_one_over_seeds(two_ranks, workdir, seed):
    """As above for more seeds (the first is above): the statistics of the global batch are those
    of one process to float rounding."""
    result = invoke("train", *TINY, *STEPS, "--seed", seed, "--out", "one")
    assert result.exit_code == 0, result.output
    _assert_same_weights(Path("one"), two_ranks / f"two-{seed}")


def test_an_augmentations_feedback_is_summed_over_the_processes(two_ranks):
    """Each rank sees its 4 reals a step; every 2 steps both get the sums of all 16."""
    fed = [json.loads((two_ranks / f"rank-{r}.json").read_text())["runs"]["toy"]["fed back"]
           for r in (0, 1)]
    assert fed[0] == fed[1] and [d["count"] for d in fed[0]] == [16.0, 16.0]


def test_adaptive_augmentations_p_is_the_same_on_every_rank_and_as_on_one_process(two_ranks,
                                                                                 workdir):
    """Each rank augments its rows of the global batch as one process would and the sign
    statistic is summed over both: p moves the same on both ranks, and as a one-process run's."""
    seen = [json.loads((two_ranks / f"rank-{r}.json").read_text())["runs"]["ada"] for r in (0, 1)]
    assert seen[0] == seen[1]
    result = invoke("train", *TINY, *ADA, "--out", "one")
    assert result.exit_code == 0, result.output
    _, one = final_tensors(Path("one"))
    _, two = final_tensors(two_ranks / "ada")
    assert float(one["loss.augment.p"]) == pytest.approx(seen[0]["p"], abs=1e-6)
    assert float(two["loss.augment.p"]) == pytest.approx(seen[0]["p"], abs=1e-6)
    assert float(one["loss.augment.rt"]) == seen[0]["rt"]
    assert abs(seen[0]["p"] - 0.5) > 0.07  # it moved


def test_stylegan2_trains_on_two_processes(two_ranks):
    """Every phase of a StyleGAN2 step (lazy R1, path length) with gradients averaged over two
    processes: one checkpoint, G_ema's w_avg followed, a grid that samples."""
    printed = json.loads((two_ranks / "rank-0.json").read_text())["runs"]["stylegan2"]
    assert "stylegan2 32x32x3" in printed["stdout"] and "done: step 4/4" in printed["stdout"]
    assert "loss_R1" in printed["stdout"] and "loss_Gpl" in printed["stdout"]
    tensors = _weights(two_ranks / "stylegan2" / "checkpoints" / "step-000000004.safetensors")
    assert tensors["G_ema.mapping.w_avg"].abs().sum() > 0
    result = invoke("sample", "-n", "4", two_ranks / "sg2.png", "--ckpt", two_ranks / "stylegan2")
    assert result.exit_code == 0, result.output


def test_a_one_process_run_resumes_on_two(two_ranks):
    printed = [json.loads((two_ranks / f"rank-{r}.json").read_text())["runs"]["resume"]
               for r in (0, 1)]
    assert "this run trained on 1 process; it continues on 2 processes" in printed[0]["stdout"]
    assert "done: step 4/4" in printed[0]["stdout"]
    assert printed[1] == {"stdout": "", "stderr": ""}
    assert valid_steps(two_ranks / "one-process") == [2, 4]


def test_gloo_sync_batchnorm_is_batchnorm_on_the_whole_batch(two_ranks):
    """To float rounding, also where a channel's mean is 100 times its spread (where the one-pass
    variance E[x²] - mean² was 6e-4 off)."""
    for rank in (0, 1):
        errors = json.loads((two_ranks / f"rank-{rank}.json").read_text())["bn"]
        assert len(errors) == 6 and max(errors.values()) < 2e-5, (rank, errors)


def test_a_rank_of_gpus_leaves_its_error_to_the_launcher(workdir, monkeypatch):
    """Under `--gpus N` a rank prints no error of its own (each rank printed its line, rank 1 one
    caused by rank 0's, and with --json two documents came out): it leaves it in the launcher's
    folder, which reports the cause once (below)."""
    reports = workdir / "reports"
    reports.mkdir()
    for name, value in {"GANCTL_LAUNCHED": "1", "GANCTL_LAUNCH_REPORTS": str(reports),
                        "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    result = invoke("inspect", "missing.safetensors", "--json")
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", "")
    assert json.loads((reports / "rank-1.json").read_text()) == {
        "message": "missing.safetensors does not exist; pass a .safetensors checkpoint or a run "
                   "directory", "exit_code": 1, "result": None,
        "peer": False}


def test_the_launcher_reports_the_first_ranks_own_error_before_those_it_caused():
    own = {"message": "no data", "exit_code": 1, "result": None, "peer": False}
    lost = {"message": "rank 0 of 2: another rank died", "exit_code": 1, "result": None, "peer": True}
    failed = distributed.reports.ranks_failed({0: 1, 1: 1}, 2, {0: lost, 1: own})
    assert (str(failed), failed.exit_code) == ("rank 1: no data", 1)
    killed = distributed.reports.ranks_failed({0: -9, 1: 1}, 2, {1: {**lost, "message": "rank 1 of 2: x"}})
    assert str(killed).startswith("rank 0 of 2 was killed by SIGKILL, and the run stopped")
    assert str(distributed.reports.ranks_failed({0: 1, 1: 1}, 2, {0: lost, 1: lost})) == lost["message"]
    assert "their own errors above" in str(distributed.reports.ranks_failed({0: 1, 1: 1}, 2, {}))


def test_a_nan_on_one_rank_rolls_every_rank_back_and_the_run_goes_on(two_ranks):
    """Rank 1's batch of step 4 is NaN: the averaged gradients carry it to both ranks, both roll
    back to the checkpoint of step 3 together (no rank left waiting in an all-reduce), and the
    run ends at its last step with finite weights."""
    printed = json.loads((two_ranks / "rank-0.json").read_text())["runs"]["nan"]
    events = [json.loads(line) for line in (two_ranks / "nan" / "metrics.jsonl").read_text().splitlines()]
    rollbacks = [e for e in events if e.get("event") == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["step"] == 4 and rollbacks[0]["to_step"] == 3
    assert "rolled back to step 3" in printed["stdout"]
    weights = _weights(two_ranks / "nan" / "checkpoints" / "step-000000006.safetensors")
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
    # on one process (and a one-process run on two: test_a_one_process_run_resumes_on_two)
    result = invoke("resume", "r", "--steps", step + 2)
    assert result.exit_code == 0, result.output
    assert "this run trained on 2 processes; it continues on 1 process" in result.output
    assert f"done: step {step + 2}/{step + 2}" in result.output


def test_a_rank_that_dies_ends_the_run_within_a_minute(workdir):
    """... and the launcher's last line names it, after the other rank's own (none of torch's
    launcher log: which ranks it stopped, ChildFailedError's report)."""
    proc, ranks = _training_ranks()
    try:
        started = time.monotonic()
        os.kill(ranks[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - started < 60
    finally:
        proc.kill()
    assert proc.returncode == 1, err[-3000:]
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: rank 0 of 2 was killed by SIGKILL, and the run stopped on "
                                "every process"), err[-3000:]
    assert all(line.startswith("error: ") for line in lines), err[-3000:]
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

    from ganctl.engine import hooks, loop  # noqa: PLC0415

    votes = []

    def agree(*values):
        votes.append(values)
        if len(votes) == 1:  # the signal arrives while this first vote is under way
            os.kill(os.getpid(), signal.SIGTERM)
            return [0] * len(values)  # ... the others voted before it: no stop yet
        return list(values)

    world = SimpleNamespace(active=True, writer=True, size=2, rank=0)
    monkeypatch.setattr(loop, "WORLD", world)
    monkeypatch.setattr(hooks, "WORLD", world)
    monkeypatch.setattr(hooks, "agree", agree)
    monkeypatch.setattr(hooks, "barrier", lambda: None)
    result = invoke("train", *TINY, "--steps", "50", "--out", "r")
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert "stopped by SIGTERM at step 2" in result.stderr
    assert [p.name for p in Path("r/checkpoints").glob("*.safetensors")] == ["step-000000002.safetensors"]


def test_the_launcher_passes_every_stop_signal_on_as_itself(monkeypatch):
    """SIGUSR1 to `--gpus N` (a batch scheduler's warning) reaches the ranks as SIGUSR1, so rank
    0's one report names it (the launcher sent SIGTERM instead, and a second document said
    SIGUSR1); a signal this process ignores (nohup's SIGHUP) stays ignored."""
    from torch.distributed.launcher import api

    seen = {}

    def fake_launch(config, entrypoint):
        seen["signals"] = config.signals_to_handle.split(",")
        return lambda *args: None

    monkeypatch.setattr(api, "elastic_launch", fake_launch)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert distributed.launch(2, ["train"]) == 0
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert set(seen["signals"]) == {"SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGXCPU", "SIGQUIT"}

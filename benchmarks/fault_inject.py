"""Kill a small training run at random moments, resume it each time, and count what was lost.

Each trial starts `ganctl resume` (the first one `ganctl train`), waits a random time, then
sends one of SIGKILL, SIGTERM, SIGINT, SIGHUP, SIGUSR1 (the last four: a clean stop). Checkpoint
writes are slowed (tests/launch.py runs ganctl with GANCTL_TEST_SLOW_WRITE) so that many kills
land in the middle of one. Throughout, a reader runs `ganctl sample` and `ganctl inspect` against
the run in a loop, as a user watching it would. After every kill:
  lost_checkpoints  +1 if the newest valid checkpoint went backwards, `latest` names a file that
                    does not verify, or any step-*.safetensors in place fails verification;
  failed_resumes    +1 if the resume exits other than by our own signal (128 + N for the clean
                    stops), or other than 0 at the end;
  failed_reads      +1 for each reader command that exits other than 0.
The run is then completed with a plain `ganctl resume`, which must exit 0.

    python benchmarks/fault_inject.py --trials 50
Last line: `trials, lost_checkpoints, failed_resumes, reads, failed_reads` and their values.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ganctl import checkpoint, rundir  # noqa: E402
from ganctl.errors import CheckpointError  # noqa: E402

LAUNCH = ROOT / "tests" / "launch.py"  # ganctl with slowed checkpoint writes

TRAIN = ["--batch-size", "16", "--g-width", "32", "--d-width", "32", "--ckpt-every", "5",
         "--log-every", "5", "--sample-every", "1000000", "--keep", "3", "--device", "cpu"]
STOPS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1]  # each a clean stop
SIGNALS = [signal.SIGKILL, *STOPS]


def expected(sig: signal.Signals) -> set[int]:
    """Exit codes that are not a failure: a kill, our own clean stop, or done."""
    return {0, -signal.SIGKILL} if sig == signal.SIGKILL else {0, 128 + sig}


class Reader(threading.Thread):
    """`ganctl sample` and `ganctl inspect` of the run, alternately, until stopped."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        super().__init__(daemon=True)
        self.env, self.cwd = env, cwd
        self.reads, self.failures = 0, []
        self.done = threading.Event()

    def run(self) -> None:
        commands = [["sample", "-n", "4", "reader.png", "--ckpt", "run", "--device", "cpu"],
                    ["inspect", "run", "--json"]]
        while not self.done.is_set():
            command = commands[self.reads % 2]
            r = subprocess.run([sys.executable, "-m", "ganctl", *command], cwd=self.cwd,
                               env=self.env, capture_output=True, text=True, timeout=300)
            self.reads += 1
            if r.returncode != 0:
                self.failures.append(f"{command[0]} rc {r.returncode}: {r.stderr.strip()[-200:]}")
                print(f"  READ FAILED: {self.failures[-1]}", flush=True)


def ganctl(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(LAUNCH), *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def state_of(run_dir: Path) -> tuple[int, bool]:
    """(newest valid step or -1, whether every checkpoint file in place verifies)."""
    ckpt_dir = run_dir / "checkpoints"
    newest, all_ok = -1, True
    for path in rundir.list_checkpoints(ckpt_dir):
        try:
            newest = max(newest, checkpoint.open_checkpoint(path).step)
        except CheckpointError:
            all_ok = False
    pointer = ckpt_dir / "latest"
    if pointer.is_file():
        try:
            checkpoint.open_checkpoint(ckpt_dir / pointer.read_text().strip())
        except CheckpointError:
            all_ok = False
    return newest, all_ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-wait", type=float, default=1.0, help="seconds after the start")
    ap.add_argument("--max-wait", type=float, default=8.0)
    ap.add_argument("--slow-write", type=float, default=0.3, help="seconds per checkpoint write")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    # Started under nohup (SIGHUP) or in the background (SIGINT), the children would inherit
    # those signals ignored, and ganctl keeps an ignored signal ignored, as it should.
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="ganctl-faults-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GANCTL_TEST_SLOW_WRITE": str(args.slow_write),
           "GANCTL_CACHE_DIR": str(work / "cache")}
    run_dir = work / "run"
    setup = subprocess.run([sys.executable, str(LAUNCH), "train", *TRAIN, "--steps", "5", "--out",
                            "run"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    if setup.returncode != 0:
        print(f"setup run failed: {setup.stderr}")
        return 1
    lost = failed = mid_write = 0
    best = 5
    reader = Reader({**env, "GANCTL_TEST_SLOW_WRITE": ""}, work)
    reader.start()
    for trial in range(1, args.trials + 1):
        proc = ganctl("resume", "run", "--steps", "100000", env=env, cwd=work)
        time.sleep(rng.uniform(args.min_wait, args.max_wait))
        sig = rng.choice(SIGNALS)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        writing = bool(list((run_dir / "checkpoints").glob(".*.tmp-*")))
        mid_write += writing
        newest, all_ok = state_of(run_dir)
        trial_lost = newest < best or not all_ok
        trial_failed = proc.returncode not in expected(sig)
        lost += trial_lost
        failed += trial_failed
        best = max(best, newest)
        print(f"trial {trial:3d}: {sig.name:7s} rc {proc.returncode:4d}  newest valid step {newest:5d}"
              f"{'  (mid-write)' if writing else ''}"
              f"{'  LOST' if trial_lost else ''}{'  FAILED: ' + err.strip()[-200:] if trial_failed else ''}",
              flush=True)
    reader.done.set()
    reader.join()
    final_steps = best + 5
    done = subprocess.run([sys.executable, str(LAUNCH), "resume", "run", "--steps", str(final_steps)],
                          cwd=work, env={**env, "GANCTL_TEST_SLOW_WRITE": ""}, capture_output=True,
                          text=True, timeout=600)
    if done.returncode != 0:
        failed += 1
        print(f"final resume failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    else:
        print(f"final resume completed the run at step {final_steps}")
    print(f"kills that landed during a checkpoint write: {mid_write}")
    print("trials, lost_checkpoints, failed_resumes, reads, failed_reads")
    print(f"{args.trials}, {lost}, {failed}, {reader.reads}, {len(reader.failures)}")
    return 0 if lost == failed == len(reader.failures) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""ganctl as a process, with faults injected from outside the package (the package has no test
hooks). Used by the tests that kill or signal a real process, and by benchmarks/fault_inject.py.

    python tests/launch.py ARGS...          # the same as: python -m ganctl ARGS...
    GANCTL_TEST_SLOW_WRITE=S python tests/launch.py ...
        atomic writes of over 1 MB (checkpoints) take about S seconds, written in ten pieces,
        so that a kill lands in the middle of one
    GANCTL_TEST_NAN=R:S python tests/launch.py ...
        under torchrun, rank R's real batch of step S is NaN (once), as a broken shard would be
    GANCTL_TEST_DIE_JOINING=R:S python tests/launch.py ...
        under torchrun or --gpus, rank R is killed (SIGKILL, as by the OOM killer) S seconds after it
        starts to join the process group, the others waiting for it there
`train --gpus N` through this script starts its ranks through it too: the faults reach them
through the environment.
"""

from __future__ import annotations

import builtins
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ganctl import fsutil  # noqa: E402
from ganctl.cli import run  # noqa: E402

SLOW_WRITE_MIN_BYTES = 1 << 20


class _SlowFile:
    """A file whose writes are cut in ten pieces with a pause after each."""

    def __init__(self, f, delay: float) -> None:
        self._f, self._delay = f, delay

    def write(self, chunk) -> int:
        step = len(chunk) // 10 + 1
        for i in range(0, len(chunk), step):
            self._f.write(chunk[i:i + step])
            self._f.flush()
            if len(chunk) > SLOW_WRITE_MIN_BYTES:
                time.sleep(self._delay / 10)
        return len(chunk)

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def slow_writes(seconds: float) -> None:
    """fsutil's open (it looks `open` up in its own module first) returns slowed files."""
    def slow_open(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        return _SlowFile(f, seconds) if "w" in mode else f
    fsutil.open = slow_open  # type: ignore[attr-defined]


def nan_batch(rank: int, step: int) -> None:
    """Rank `rank`'s real batch of step `step` is NaN, once."""
    from helpers import nan_step  # noqa: PLC0415 (tests/ is on the path: this script's folder)

    from ganctl.engine import loop  # noqa: PLC0415

    real_step = loop.train_step
    fired: list[int] = []

    def poisoned(state, phases):
        if int(os.environ.get("RANK", "0")) != rank or state.step + 1 != step or fired:
            return real_step(state, phases)
        fired.append(step)
        return nan_step(real_step, state, phases)
    loop.train_step = poisoned


def die_joining(rank: int, seconds: float) -> None:
    """Rank `rank` is killed `seconds` after it starts to join the process group."""
    from ganctl.distributed import world  # noqa: PLC0415

    real_join = world._join

    def dying(*args):
        if int(os.environ.get("RANK", "0")) == rank:
            time.sleep(seconds)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_join(*args)
    world._join = dying


def ranks_through_this_script() -> None:
    """`--gpus N` starts `python -m ganctl ...`; here `python tests/launch.py ...`."""
    from torch.distributed.launcher import api  # noqa: PLC0415

    real_launch = api.elastic_launch

    def through_this_script(config, entrypoint):
        start = real_launch(config, entrypoint)
        return lambda *args: start(__file__, *args[2:])  # args: -m ganctl ARGS...
    api.elastic_launch = through_this_script


if __name__ == "__main__":
    if delay := os.environ.get("GANCTL_TEST_SLOW_WRITE"):
        slow_writes(float(delay))
    if where := os.environ.get("GANCTL_TEST_NAN"):
        nan_batch(*map(int, where.split(":")))
    if where := os.environ.get("GANCTL_TEST_DIE_JOINING"):
        rank, seconds = where.split(":")
        die_joining(int(rank), float(seconds))
    if any(arg == "--gpus" or arg.startswith("--gpus=") for arg in sys.argv):
        ranks_through_this_script()
    sys.argv[0] = "ganctl"
    run()

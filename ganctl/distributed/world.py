"""This process's place in a distributed run: torchrun's environment (rank, world size, local
rank, the rendezvous, GANCTL_DIST_TIMEOUT), the World every module asks, and joining the process
group once, in one line when it fails.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ganctl.errors import ConfigError, GanctlError

TIMEOUT_VARIABLE = "GANCTL_DIST_TIMEOUT"  # seconds a rank waits for the others: to join, in a collective
DEFAULT_TIMEOUT_S = 600.0


class RankFailed(GanctlError):
    """Another rank of a distributed run died or stopped answering (`peer`: this rank failed
    because of another's failure, which is the one to report), or the ranks a launcher
    started failed."""

    def __init__(self, message: str, peer: bool = False) -> None:
        super().__init__(message)
        self.peer = peer


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    control: Any = None  # the gloo group that decides control flow (None: one process)

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def writer(self) -> bool:
        """Whether this process writes files and output: rank 0, or the only process."""
        return self.rank == 0


WORLD = World()


def from_environment() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's variables, None outside a launcher (or
    for a world of one)."""
    texts = [os.environ.get(name, default) for name, default in
             (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0"))]
    if not all(text.strip().isascii() and text.strip().isdigit() and len(text.strip()) <= 6
               for text in texts):
        raise ConfigError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers from 0 (set by "
                          f"torchrun), got {', '.join(repr(t[:20]) for t in texts)}")
    size, rank, local = map(int, texts)
    if size < 1:
        raise ConfigError(f"WORLD_SIZE {size} must be 1 or more (the number of processes; set by "
                          "torchrun)")
    if size > 1 and not (0 <= rank < size and 0 <= local < size):
        raise ConfigError(f"RANK {rank} and LOCAL_RANK {local} must lie in 0..{size - 1} for "
                          f"WORLD_SIZE {size}; start through torchrun or ganctl train --gpus N")
    return (rank, size, local) if size > 1 else None


def setup(device: torch.device) -> torch.device:
    """Join the process group of a torchrun launch (once): NCCL on CUDA, each rank on its
    LOCAL_RANK GPU whatever --device auto would pick; gloo on a CPU. Returns this rank's device.
    Outside a launcher, the device as it is."""
    found = from_environment()
    if found is None:
        return device
    import torch.distributed as dist  # noqa: PLC0415

    rank, size, local = found
    if os.environ.get(LAUNCHED) == "1":
        _stop_with_launcher()
    address, port, waited = _rendezvous(size)
    backend = os.environ.get("GANCTL_DIST_BACKEND", "nccl" if device.type == "cuda" else "gloo")
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"GANCTL_DIST_BACKEND={backend!r}: use nccl or gloo")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local >= count and backend == "nccl":
            raise ConfigError(f"rank {rank} has LOCAL_RANK {local}, but this machine has {count} "
                              "GPU(s); start at most that many processes per node (torchrun "
                              "--nproc_per_node)")
        # gloo may share GPUs among ranks (a check of the distributed code on one GPU)
        device = torch.device("cuda", local % count)
        torch.cuda.set_device(device)
    elif device.type != "cpu" or backend == "nccl":
        raise ConfigError(f"distributed training runs on CUDA GPUs (nccl or gloo) or CPUs (gloo), "
                          f"not {device.type} with {backend}")
    if not dist.is_initialized():
        try:
            with _torch_log_kept_back():
                WORLD.control = _waiting_for_signals(_join, backend, device,
                                                     datetime.timedelta(seconds=waited))
        except (RuntimeError, OSError, ValueError) as e:  # DistError, NCCL's, a socket's
            raise _join_failed(e, rank, size, f"{address}:{port}", waited) from None
        WORLD.rank, WORLD.size, WORLD.local_rank = rank, size, local
    return device


LAUNCHED = "GANCTL_LAUNCHED"  # set by launch() for the processes it starts
# launch()'s folder where each rank leaves its error, for the launcher to report it once (one
# line, one JSON document with --json) instead of every rank printing its own
REPORTS = "GANCTL_LAUNCH_REPORTS"


def timeout_s() -> float:
    """GANCTL_DIST_TIMEOUT: how long a rank waits for the others, in seconds."""
    text = os.environ.get(TIMEOUT_VARIABLE, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= MAX_TIMEOUT_S:
        raise ConfigError(f"{TIMEOUT_VARIABLE}={text[:40]!r} must be a positive number of seconds, "
                          f"at most {MAX_TIMEOUT_S:.0f} (30 days; default {DEFAULT_TIMEOUT_S:g})")
    return seconds


MAX_TIMEOUT_S = 30 * 86400.0  # a month: longer overflows torch's timeout (a C int of ms)


def _rendezvous(size: int) -> tuple[str, int, float]:
    """MASTER_ADDR, MASTER_PORT and the timeout, checked before any socket opens."""
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ConfigError(f"WORLD_SIZE {size} is set but {name} is not: start through torchrun "
                              "or ganctl train --gpus N, which set both")
    text = os.environ["MASTER_PORT"]
    if not (text.isdigit() and 0 < int(text) < 1 << 16):
        raise ConfigError(f"MASTER_PORT={text!r} must be a TCP port, 1 to 65535")
    return os.environ["MASTER_ADDR"], int(text), timeout_s()


def _join(backend: str, device: torch.device, timeout: datetime.timedelta) -> Any:
    """Join the process group; returns the control group (gloo, on the CPU)."""
    import torch.distributed as dist  # noqa: PLC0415

    if backend == "nccl":  # device_id: NCCL's communicators made now, on this GPU
        torch.cuda.set_device(device)  # this thread's current device too
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
        return dist.new_group(backend="gloo", timeout=timeout)
    dist.init_process_group("gloo", timeout=timeout)
    return dist.group.WORLD


def _waiting_for_signals(fn: Any, *args: Any) -> Any:
    """fn(*args) on a helper thread while this one waits where a stop signal acts at once: torch
    waits for the other ranks in C++, where Python runs no signal handler, so a rank stopped by
    its launcher (another rank died) or by Ctrl-C would sit out the whole timeout first."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = e

    worker = threading.Thread(target=target, name="ganctl-join", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(SIGNAL_POLL_S)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


SIGNAL_POLL_S = 0.1
_BACKTRACE = re.compile(r"^(frame #\d+:|Exception raised from |<omitting python frames>|\s*$)")


@contextmanager
def _torch_log_kept_back() -> Iterator[None]:
    """The block with file descriptor 2 on a temporary file: torch's C++ logs each retry of a
    rendezvous with a backtrace of some 20 lines, written past Python's sys.stderr. After a
    success what it said (less backtraces) goes to stderr; after a failure it is dropped, the
    one-line error telling what happened."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+b") as kept:
        os.dup2(kept.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        kept.seek(0)
        said = [line for line in kept.read().decode(errors="replace").splitlines()
                if not _BACKTRACE.match(line)]
    if said:
        print("\n".join(said), file=sys.stderr)


def _join_failed(e: BaseException, rank: int, size: int, where: str, waited: float) -> RankFailed:
    """Why joining the process group failed, in one line: the rendezvous's TCP store at
    MASTER_ADDR:MASTER_PORT not reachable, its port taken, or the other ranks not there in time."""
    text = " ".join(str(e).split())
    lowered = text.lower()
    who = f"rank {rank} of {size}"
    longer = f"or give them longer with {TIMEOUT_VARIABLE}=<seconds>"
    if "eaddrinuse" in lowered or "address already in use" in lowered:
        return RankFailed(f"{who}: the rendezvous port MASTER_PORT {where.rsplit(':', 1)[1]} is in use "
                          "on this machine; choose a free one (torchrun --standalone and ganctl "
                          "train --gpus N pick one)")
    if "timed out" in lowered or "timeout" in lowered:
        joined = re.search(r"(\d+)/(\d+) clients joined", text)
        if "connect" in lowered:
            waited_for = (f"an answer from the rendezvous's TCP store at MASTER_ADDR:MASTER_PORT "
                          f"{where} (rank 0 or torchrun hosts it)")
        else:
            count = f" ({joined[1]} of {joined[2]} joined)" if joined else ""
            waited_for = (f"the other ranks to join the rendezvous at MASTER_ADDR:MASTER_PORT "
                          f"{where}{count}")
        return RankFailed(f"{who} waited {waited:g} s ({TIMEOUT_VARIABLE}) for {waited_for}; start "
                          f"all {size} ranks with the same MASTER_ADDR and MASTER_PORT, {longer}", peer=True)
    return RankFailed(f"{who} could not join the others at MASTER_ADDR:MASTER_PORT {where} "
                      f"({type(e).__name__}: {text[:200]}); check that all {size} ranks run (one "
                      f"that stopped says why) and reach it; each waits {waited:g} s for the others "
                      f"({TIMEOUT_VARIABLE})", peer=True)


def _stop_with_launcher() -> None:
    """A rank of `--gpus N` gets SIGTERM (and so checkpoints with the others and stops) when its
    launcher dies without passing a signal on (kill -9, the OOM killer): no orphans left training
    a run the user thinks is stopped. Linux only (prctl); elsewhere nothing."""
    import ctypes  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import sys  # noqa: PLC0415

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher is already gone
        os.kill(os.getpid(), signal.SIGTERM)

"""Training on several processes with torch.distributed: torchrun's environment, the process
groups, and the few collectives the engine needs.

A run under torchrun (WORLD_SIZE > 1 in the environment) is data parallel: every rank holds the
same G and D, draws its shard of each global batch, and the gradients of each phase are
averaged over the ranks with one all-reduce of the flattened gradients before the optimizer
steps (as StyleGAN2-ADA does, rather than the DistributedDataParallel wrapper: a GAN step calls
D on reals and fakes with G or D frozen in between, which DDP's reducer does not allow without
find_unused_parameters and re-wrapping). The weights start from rank 0's and stay equal.

Control flow is decided together over a gloo group on the CPU (a per-step all-reduce of a few
integers that never waits on the GPU): a stop signal or --max-time on any rank stops every rank
at the same step; a divergence seen by any rank rolls every rank back. Rank 0 alone writes the
run directory, checkpoints, samples, metrics and progress, and evaluates; the others wait at a
barrier meanwhile. A rank that dies closes its sockets, and the others' next collective fails
at once with a one-line error (a rank that hangs: after GANCTL_DIST_TIMEOUT seconds). Joining
the process group fails the same way, in one line: torch's C++ log of the attempt is kept off
the terminal unless the join succeeds.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganctl.errors import ConfigError, GanctlError
from ganctl.fsutil import atomic_write

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


def leave_report(message: str, code: int, result: dict[str, Any] | None, peer: bool) -> bool:
    """Under launch(): this rank's error (`peer`: caused by another rank's) left for the launcher,
    which reports the cause once; True when left there, so that the rank prints nothing."""
    folder = os.environ.get(REPORTS)
    if not folder or os.environ.get(LAUNCHED) != "1":
        return False
    try:
        found = from_environment()
    except ConfigError:
        return False
    doc = {"message": message, "exit_code": code, "result": result, "peer": peer}
    try:
        atomic_write(Path(folder) / f"rank-{found[0] if found else 0}.json",
                     json.dumps(doc).encode())
    except (OSError, TypeError, ValueError):  # the launcher's folder gone: say it here instead
        return False
    return True


def _read_reports(folder: str, size: int) -> dict[int, dict[str, Any]]:
    """The errors the ranks left (leave_report), by rank; unreadable ones are left out."""
    reports = {}
    for rank in range(size):
        try:
            doc = json.loads((Path(folder) / f"rank-{rank}.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("message"), str) \
                and type(doc.get("exit_code")) is int:
            reports[rank] = doc
    return reports


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


_SOURCE = re.compile(r"\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*")  # "[/__w/.../pair.cc:561] " in torch's texts


def _failed(e: BaseException) -> RankFailed:
    said = _SOURCE.sub("", " ".join(str(e).split()))
    first = said.split(". ")[0][:160]  # its first sentence: "Connection closed by peer [...]:48797"
    return RankFailed(f"rank {WORLD.rank} of {WORLD.size}: another rank died or stopped answering "
                      f"({type(e).__name__}: {first}); this one stops too; a run that had begun "
                      "keeps its last checkpoint, and ganctl resume continues it once every process "
                      "is back", peer=True)


@contextmanager
def collective() -> Iterator[None]:
    """A collective's failure (a dead peer) as RankFailed."""
    try:
        yield
    except (RuntimeError, OSError) as e:
        if WORLD.active and not isinstance(e, GanctlError):
            raise _failed(e) from None
        raise


def agree(*values: int) -> list[int]:
    """The largest of each value over the ranks (0 and 1 flags: any rank's 1 wins); one
    CPU all-reduce on the control group."""
    if not WORLD.active:
        return list(values)
    import torch.distributed as dist  # noqa: PLC0415

    t = torch.tensor(values, dtype=torch.int64)
    with collective():
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=WORLD.control)
    return [int(v) for v in t.tolist()]


def barrier() -> None:
    """Every rank waits here for the others (rank 0 writing or evaluating)."""
    if WORLD.active:
        import torch.distributed as dist  # noqa: PLC0415

        with collective():
            dist.barrier(group=WORLD.control)


def broadcast_object(value: Any) -> Any:
    """Rank 0's value on every rank."""
    if not WORLD.active:
        return value
    import torch.distributed as dist  # noqa: PLC0415

    box = [value]
    with collective():
        dist.broadcast_object_list(box, src=0, group=WORLD.control)
    return box[0]


@contextmanager
def local_first() -> Iterator[None]:
    """The block runs on each node's local rank 0 first (a decode cache built once per node),
    then on the others, which find its work done."""
    if WORLD.active and WORLD.local_rank != 0:
        barrier()
    yield
    if WORLD.active and WORLD.local_rank == 0:
        barrier()


def broadcast_module(net: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank."""
    if not WORLD.active:
        return
    import torch.distributed as dist  # noqa: PLC0415

    with collective(), torch.no_grad():
        for t in [*net.parameters(), *net.buffers()]:
            dist.broadcast(t.data, src=0)


def sum_over_ranks(tensors: list[torch.Tensor]) -> None:
    """Each tensor summed over the ranks, in place, in one all-reduce (no-op for one process)."""
    if not WORLD.active or not tensors:
        return
    import torch.distributed as dist  # noqa: PLC0415

    flat = torch.cat([t.reshape(-1) for t in tensors])
    with collective():
        dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def average_gradients(net: nn.Module) -> None:
    """Each trainable parameter's gradient, averaged over the ranks, in one all-reduce (a
    parameter without a gradient on this rank counts as zeros, so every rank sends the same
    shapes)."""
    if not WORLD.active:
        return
    import torch.distributed as dist  # noqa: PLC0415

    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params])
    with collective():
        dist.all_reduce(flat)
    flat.div_(WORLD.size)
    offset = 0
    for p in params:
        n = p.numel()
        piece = flat[offset:offset + n].view_as(p)
        if p.grad is None:
            p.grad = piece.clone()
        else:
            p.grad.copy_(piece)
        offset += n


def share(count: int) -> tuple[int, int]:
    """This rank's contiguous block of range(count): the seeds of the fakes it evaluates."""
    size, rank = WORLD.size, WORLD.rank
    return count * rank // size, count * (rank + 1) // size


def merge_features(acc: Any) -> Any:
    """Every rank's feature Accumulator (ganctl.metrics.stats), summed on rank 0, which gets
    the merged one (its kept features in seed order: rank 0's block first); None on the other
    ranks. One process: acc itself."""
    if not WORLD.active:
        return acc
    import torch.distributed as dist  # noqa: PLC0415

    with collective():
        counts: list[Any] = [None] * WORLD.size
        dist.all_gather_object(counts, acc.count, group=WORLD.control)
        if not all(counts):  # a rank without fakes: every rank sees it and stops alike
            raise ConfigError(f"--eval-num {sum(counts)} leaves a process without fakes; "
                              f"evaluate at least {WORLD.size} images")
        for t in (acc.total, acc.outer):
            dist.reduce(t, dst=0)
        kept: list[Any] | None = [None] * WORLD.size if WORLD.writer else None
        dist.gather_object(torch.cat(acc.kept) if acc.kept else None, kept, dst=0,
                           group=WORLD.control)
    if not WORLD.writer:
        return None
    assert kept is not None
    rows = torch.cat([k for k in kept if k is not None])[:acc.keep]
    acc.kept, acc._kept_rows, acc.count = [rows], len(rows), sum(counts)
    return acc


def split_batch(batch_size: int) -> int:
    """This rank's share of the global batch; an error when it does not divide."""
    if batch_size % WORLD.size:
        raise ConfigError(f"--batch-size {batch_size} is the global batch and must divide among "
                          f"the {WORLD.size} processes; use a multiple of {WORLD.size}")
    return batch_size // WORLD.size


# --- ganctl train --gpus N: torch's own launcher, on this machine ---------------------------------

def free_port() -> int:
    """A TCP port free on this machine now, for the rendezvous."""
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def without_option(argv: list[str], name: str) -> list[str]:
    """argv without `name VALUE` and `name=VALUE`."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            out.append(arg)
    return out


def launch(processes: int, argv: list[str]) -> int:
    """`python -m ganctl ARGV` on `processes` local processes through torch's elastic launcher
    (what torchrun runs): a free port, the ranks' output on this terminal, a stop signal passed
    on to every rank (each checkpoints and stops). Returns the exit code for the command: 0, or
    128 + N when every rank stopped on signal N; a rank that failed is RankFailed, one line
    after the ranks' own (torch's log of the launch is kept off the terminal)."""
    import dataclasses  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import uuid  # noqa: PLC0415

    from torch.distributed.elastic.multiprocessing.api import SignalException  # noqa: PLC0415
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # noqa: PLC0415
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch  # noqa: PLC0415

    from ganctl.errors import STOP_SIGNALS  # noqa: PLC0415

    options: dict[str, Any] = {}
    if "signals_to_handle" in {f.name for f in dataclasses.fields(LaunchConfig)}:
        # every stop signal goes on to the ranks as itself (a batch scheduler's SIGUSR1 too: the
        # ranks' report then names the signal the user sent); one this process ignores (nohup's
        # SIGHUP, SIGINT in the background) stays ignored
        options["signals_to_handle"] = ",".join(
            s.name for s in (*STOP_SIGNALS, signal.SIGQUIT)
            if signal.getsignal(s) is not signal.SIG_IGN)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes,
                          run_id=uuid.uuid4().hex[:12], rdzv_backend="c10d",
                          rdzv_endpoint=f"127.0.0.1:{free_port()}", max_restarts=0,
                          monitor_interval=0.5, start_method="spawn", **options)
    reports = tempfile.mkdtemp(prefix="ganctl-ranks-")
    os.environ.update({LAUNCHED: "1", REPORTS: reports})  # the ranks inherit them
    try:
        with _launcher_log_off():
            elastic_launch(config, sys.executable)("-m", "ganctl", *argv)
    except ChildFailedError as e:
        codes = {rank: failure.exitcode for rank, failure in e.failures.items()}
        stops = set(codes.values())
        if len(stops) == 1 and next(iter(stops)) >= STOPPED:  # every rank stopped on a signal
            return stops.pop()
        raise _ranks_failed(codes, processes, _read_reports(reports, processes)) from None
    except SignalException as e:
        return 128 + int(e.sigval)
    finally:
        os.environ.pop(LAUNCHED, None)
        os.environ.pop(REPORTS, None)
        shutil.rmtree(reports, ignore_errors=True)
    return 0


STOPPED = 128  # an exit code from 128 up: a rank stopped on signal (code - 128), after its checkpoint
_LAUNCHER_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher")


class _LauncherLogFilter(logging.Filter):
    """Drops the records of torch's elastic agent and launcher."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(_LAUNCHER_LOGGERS)


@contextmanager
def _launcher_log_off() -> Iterator[None]:
    """torch's elastic agent logs each rank it stops and each that failed, with a traceback of
    the failure: the ranks say it themselves, and the launcher one line after them."""
    handlers: set[logging.Handler] = set()
    for name in _LAUNCHER_LOGGERS:
        logger: logging.Logger | None = logging.getLogger(name)
        while logger is not None:
            handlers.update(logger.handlers)
            logger = logger.parent if logger.propagate else None
    if logging.lastResort is not None:
        handlers.add(logging.lastResort)
    quiet = _LauncherLogFilter()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def _exit_reason(code: int, processes: int = 1) -> str:
    """An exit code as words: 'exited with code 1', 'was killed by SIGKILL'."""
    import signal  # noqa: PLC0415

    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"{'was' if processes == 1 else 'were'} killed by {name}"


def _ranks_failed(codes: dict[int, int], size: int,
                  reports: dict[int, dict[str, Any]] | None = None) -> GanctlError:
    """The launcher's one line after its ranks failed (exit codes by rank, negative: killed by
    that signal; the errors they left, by rank): the first rank's own error (not one caused by
    another's), else the likeliest cause, a rank killed (the OOM killer's SIGKILL) before one
    that exited with an error (maybe its collective lost the killed one) before one that the
    launcher stopped after the others (SIGTERM); else what the ranks said."""
    import signal  # noqa: PLC0415

    reports = reports or {}
    own = [rank for rank in sorted(reports) if not reports[rank].get("peer")]
    killed = [rank for rank, code in codes.items() if code < 0 and rank not in reports]
    if own or (reports and not killed):
        rank = (own or sorted(reports))[0]
        doc = reports[rank]
        message = doc["message"]
        failed = GanctlError(message if rank == 0 or message.startswith(f"rank {rank} ")
                             else f"rank {rank}: {message}")
        failed.exit_code = doc["exit_code"]
        failed.result = doc["result"] if isinstance(doc.get("result"), dict) else None
        return failed
    if len(codes) == size and len(set(codes.values())) == 1:
        return RankFailed(f"all {size} processes {_exit_reason(next(iter(codes.values())), size)}; "
                          "their own errors above say why")
    stopped = (-int(signal.SIGTERM), STOPPED + int(signal.SIGTERM))
    rank = min(codes, key=lambda r: (codes[r] in stopped, codes[r] > 0, r))
    said = " (its error is above)" if codes[rank] > 0 else ""
    return RankFailed(f"rank {rank} of {size} {_exit_reason(codes[rank])}{said}, and the run stopped "
                      "on every process; fix that and run the command again (ganctl resume "
                      "continues a run that has a checkpoint)")


# --- BatchNorm over the global batch on CPU processes ---------------------------------------------

class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of every rank's batch together, for CPU
    processes (torch's SyncBatchNorm runs on CUDA alone). Two all-reduces with autograd
    (torch.distributed.nn), so the gradient flows through the shared statistics as with one
    process: the per-channel sums and the count give the global mean, then the sums of squared
    deviations from it give the variance. (E[x²] - mean² in one all-reduce cancels for a channel
    whose mean is large against its spread: runs on 1 and 2 processes drifted apart by 1e-3.)
    Evaluation, and a single process, are plain BatchNorm. Its tensors are BatchNorm's:
    checkpoints load either way."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected a 2D or higher input (got {input.dim()}D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not WORLD.active:
            return super().forward(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        sums = _summed(torch.cat([x.sum(dims), x.new_tensor([x.numel() // channels])]))
        total = sums[-1]
        mean = sums[:channels] / total
        deviation = x - mean.view(shape)
        var = _summed((deviation * deviation).sum(dims)) / total  # biased, as BatchNorm's
        y = deviation * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            self._track(mean.detach(), var.detach(), total)
        return y

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, var: torch.Tensor, total: torch.Tensor) -> None:
        """The running statistics as BatchNorm keeps them: the unbiased variance."""
        tracked = self.num_batches_tracked
        assert tracked is not None and self.running_var is not None
        tracked.add_(1)
        m = 1.0 / float(tracked) if self.momentum is None else self.momentum
        unbiased = var * total / (total - 1).clamp_min(1)
        self.running_mean.mul_(1 - m).add_(mean, alpha=m)  # type: ignore[union-attr]
        self.running_var.mul_(1 - m).add_(unbiased, alpha=m)


def _summed(t: torch.Tensor) -> torch.Tensor:
    """t summed over the ranks, differentiable: the gradient is summed back to every rank."""
    from torch.distributed.nn.functional import all_reduce  # noqa: PLC0415

    with warnings.catch_warnings():  # torch marks it deprecated; its successor lacks autograd
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(t)


def sync_batchnorm(net: nn.Module, device: torch.device) -> nn.Module:
    """net with every BatchNorm computing its statistics over the global batch: torch's
    SyncBatchNorm on CUDA, GlooSyncBatchNorm on CPU processes."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    for name, child in net.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlooSyncBatchNorm):
            synced = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            synced.train(child.training)
            setattr(net, name, synced.to(device))
        else:
            sync_batchnorm(child, device)
    return net

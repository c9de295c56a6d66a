"""`ganctl train --gpus N`: the command on N local processes through torch's elastic launcher
(what torchrun runs), a free port for their rendezvous, stop signals passed on to every rank,
and torch's log of the launch kept off the terminal.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ganctl.distributed.reports import STOPPED, ranks_failed, read_reports
from ganctl.distributed.world import LAUNCHED, REPORTS


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
        raise ranks_failed(codes, processes, read_reports(reports, processes)) from None
    except SignalException as e:
        return 128 + int(e.sigval)
    finally:
        os.environ.pop(LAUNCHED, None)
        os.environ.pop(REPORTS, None)
        shutil.rmtree(reports, ignore_errors=True)
    return 0


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

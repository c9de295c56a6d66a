"""Why a `--gpus N` run failed, said once: each rank leaves its error for the launcher
(leave_report), and the launcher reads them and makes its one line from them and from the
ranks' exit codes (the first rank's own error, else the likeliest cause).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ganctl.distributed.world import LAUNCHED, REPORTS, RankFailed, from_environment
from ganctl.errors import ConfigError, GanctlError
from ganctl.fsutil import atomic_write


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


def read_reports(folder: str, size: int) -> dict[int, dict[str, Any]]:
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


STOPPED = 128  # an exit code from 128 up: a rank stopped on signal (code - 128), after its checkpoint


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


def ranks_failed(codes: dict[int, int], size: int,
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

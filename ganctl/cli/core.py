"""The command line's core: the app, errors as exit codes (and as JSON with --json), stop
signals, and what every command shares to report its result.

Exit codes: 0 done; 1 a one-line error on stderr (traceback only with --debug); 2 a bad
command line (Typer's usage error); 128 + N stopped by signal N (SIGHUP 129, SIGINT 130,
SIGTERM 143 ...), with a one-line message (and with --json the JSON document) wherever it lands.
The user's output going away (a closed pipe or terminal) changes none of this.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from ganctl import __version__
from ganctl.errors import STOP_SIGNALS, os_error_message
from ganctl.fsutil import NotRegularFile


class _JsonErrors(typer.core.TyperGroup):
    """Errors are one JSON document on stdout too when --json was given (the human line still
    goes to stderr), also for a bad command line (exit 2)."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        global _OUTPUT
        argv = list(sys.argv[1:] if args is None else args)
        _OUTPUT = _Command(json="--json" in argv, argv=argv)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False,
                              windows_expand_args=windows_expand_args, **extra)
            code = rv if isinstance(rv, int) else 0
        except SignalExit as e:  # a stop outside training (which checkpoints, then Stopped)
            code = _stopped(e.signum)
        except typer._click.exceptions.ClickException as e:
            _json_error(e.format_message(), e.exit_code)
            e.show()
            code = e.exit_code
        except typer.Abort:
            _json_error("aborted", 1)
            print("Aborted!", file=sys.stderr)
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code

    def get_command(self, ctx: typer._click.Context, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if cmd_name == "resume":  # its settings default to the run's own, not to train's
            from ganctl.config import RESUME_OVERRIDABLE

            for param in command.params if command is not None else ():
                if param.name in RESUME_OVERRIDABLE and param.param_type_name == "option":
                    param.show_default = "the run's"  # type: ignore[attr-defined]
        return command

    def invoke(self, ctx: typer._click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # Ctrl-C under Python's own handler (the app embedded)
            raise SignalExit(signal.SIGINT) from None


@dataclass
class _Command:
    """What the command line being run asked for, and how far it got (to report a stop)."""

    json: bool = False  # --json was given
    name: str = ""  # "ganctl train", "ganctl data prepare" ... (once it accepts signals)
    training: str = ""  # train and resume: "started" or "resumed", what the loop would do
    log: Any = None  # their RunLog, which knows whether the loop began
    argv: list[str] = field(default_factory=list)  # the command line (--gpus runs it again)
    at_stop: Callable[[], tuple[str, dict[str, Any]]] | None = None  # how far it got, at a stop

    def unfinished(self) -> str:
        """What a stop came before."""
        if self.training and not (self.log is not None and self.log.started):
            new = "new " if self.training == "resumed" else ""
            return f"training {self.training}; no {new}checkpoint was written"
        return f"{self.name or 'the command'} finished"


_OUTPUT = _Command()
_PROCESS = {"owns_signals": False}  # run() started this process: its stop signals are ours


def _json_text(doc: Any) -> str:
    """A --json document as strict JSON: a NaN or infinite number (a diverged run's last loss, a
    damaged checkpoint's record) is written as the text "nan" / "inf", as metrics.jsonl writes
    it, never as NaN or Infinity, which JSON readers refuse."""
    def strict(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, dict):
            return {k: strict(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [strict(v) for v in value]
        return value

    return json.dumps(strict(doc), allow_nan=False)


def _json_error(message: str, code: int, result: dict[str, Any] | None = None) -> None:
    if _OUTPUT.json:
        typer.echo(_json_text({**(result or {}), "error": message, "exit_code": code}))


app = typer.Typer(
    name="ganctl",
    cls=_JsonErrors,
    help="Train and sample GANs. Example: `ganctl train` then `ganctl sample -n 64 out.png`.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",  # panels and defaults; help text is escaped where it has brackets
)

T = TypeVar("T")


def _report(message: str, code: int, result: dict[str, Any] | None = None,
            peer: bool = False) -> None:
    """One line on stderr and, with --json, the error as JSON on stdout. A rank of `--gpus N`
    leaves its error to the launcher instead, which reports the cause once (`peer`: this error
    was caused by another rank's)."""
    from ganctl.text import one_line

    _outcome_decided()
    # one line whatever a value quoted in it holds (a path or setting with a line break in it)
    message = one_line(message)
    if code < 128 and os.environ.get("GANCTL_LAUNCH_REPORTS"):
        from ganctl.distributed import leave_report

        if leave_report(message, code, result, peer):
            return
    if rank := _rank():  # another rank: its errors alone, never JSON (rank 0 speaks for the run)
        if code < 128:  # once named: "rank 1 of 2 waited ..." needs no "rank 1: " before it
            named = message.startswith(f"rank {rank} ")
            print(f"error: {message}" if named else f"error: rank {rank}: {message}", file=sys.stderr)
        return
    _json_error(message, code, result)
    print(f"error: {message}" if code == 1 else message, file=sys.stderr)


def _fail(message: str, code: int = 1, result: dict[str, Any] | None = None,
          peer: bool = False) -> None:
    """One line on stderr (and, with --json, the error as JSON on stdout), then exit `code`."""
    _report(message, code, result, peer)
    raise typer.Exit(code)


def _stopped(signum: int) -> int:
    """Report a stop signal that ended the command outside training; its exit code, 128 + N."""
    name = signal.Signals(signum).name
    code = 128 + signum
    if _OUTPUT.at_stop is not None:
        where, result = _OUTPUT.at_stop()
        _report(f"stopped by {name} {where}", code, {"stopped": name, **result})
    else:
        _report(f"stopped by {name} before {_OUTPUT.unfinished()}", code, {"stopped": name})
    return code


def _call(debug: bool, fn: Callable[..., T], *args: Any) -> T:
    """Run an engine call; expected errors become one line on stderr and exit 1 (or 128+N)."""
    from ganctl.errors import GanctlError, UsageError

    _accept_signals()
    try:
        return fn(*args)
    except UsageError as e:  # an argument the engine refuses as given: a bad command line
        raise typer.BadParameter(str(e), param_hint=e.option) from None
    except GanctlError as e:
        if debug:
            traceback.print_exc()
        # a stopped run still reports where it stands
        _fail(str(e), e.exit_code, e.result, peer=getattr(e, "peer", False))
    except OSError as e:  # disk full, permissions, a vanished file: say which and what to do
        if debug:
            traceback.print_exc()
        if isinstance(e, NotRegularFile):
            _fail(f"{e.filename} is not a regular file (a FIFO, socket or device); move it away")
        _fail(os_error_message(e))
    except MemoryError:  # a checkpoint, model or dataset larger than this machine's memory
        if debug:
            traceback.print_exc()
        _fail("out of memory: the checkpoint, model or dataset is too large for this machine")
    except Exception as e:  # a bug: still one line, unless asked for the traceback
        if debug:
            raise
        _fail(f"unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)")
    raise AssertionError("unreachable")


def _say(message: str) -> None:
    """A human note on stderr (stdout may carry --json)."""
    from ganctl.text import printable

    typer.echo(printable(message), err=True)


def _console(json_mode: bool) -> Console:
    # With --json, stdout carries the JSON document alone: everything human goes to stderr.
    # Under torchrun, ranks other than 0 show nothing (rank 0 speaks for the run).
    from ganctl.output.console import QuietOnClosedPipe

    if _rank():
        return QuietOnClosedPipe(file=open(os.devnull, "w"), highlight=False)  # noqa: SIM115
    return QuietOnClosedPipe(stderr=json_mode, highlight=False)


def _rank() -> int:
    """This process's rank under torchrun (0 outside a launcher)."""
    from ganctl.distributed import from_environment

    try:
        found = from_environment()
    except Exception:  # noqa: BLE001 - bad variables are reported where the run joins
        return 0
    return found[0] if found else 0


def _emit(json_mode: bool, result: dict[str, Any], human: str) -> None:
    """The command's result: the JSON document with --json, else `human` (rank 0's alone)."""
    from ganctl.text import printable

    _outcome_decided()
    if _rank():
        return
    if json_mode:
        typer.echo(_json_text(result))
    else:
        typer.echo(printable(human))


def _given(**options: Any) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ganctl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Train and sample GANs from the command line."""


DEFERRED = STOP_SIGNALS


class SignalExit(SystemExit):
    """A stop signal outside the training loop (which checkpoints first, then raises Stopped):
    it unwinds like Ctrl-C does, so temp files are cleaned up; the command line then reports
    it (`stopped by SIGTERM before ...`, also as JSON with --json) and exits 128 + N."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def _terminate(signum: int, frame: object) -> None:
    raise SignalExit(signum)


def _command_name() -> str:
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    names = []
    while ctx is not None and ctx.parent is not None:  # up to the root, whose name is the program's
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["ganctl", *reversed(names)]) if names else ""


def _accept_signals() -> None:
    """Deliver the stop signals held back during start-up (a no-op once done)."""
    _OUTPUT.name = _OUTPUT.name or _command_name()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, DEFERRED)


def _outcome_decided() -> None:
    """The command's outcome is being reported: a stop signal from now on is ignored, as it
    would cut the report short or make the exit code disagree with it (the command is ending
    anyway). Only in a process run() started: an embedding program's handlers are its own."""
    if _PROCESS["owns_signals"]:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)


def run() -> None:
    """Console-script entry point. Stop signals are held back until the command has imported
    the engine (torch's import can be broken by an exception raised inside it) and then act:
    a stop before any work is an exit 128 + N with its message, not a traceback or a swallowed
    signal. stdout and stderr are guarded: their reader going away only silences them."""
    from ganctl.output.console import guard_user_output

    signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED)
    guard_user_output()
    _PROCESS["owns_signals"] = True
    for s in STOP_SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:  # nohup's SIGHUP stays ignored
            signal.signal(s, _terminate)
    app()


def _usage(hint: str, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args), its ConfigError a bad command line (exit 2) naming the option `hint`: for
    checks of an option's own text, which need no checkpoint."""
    from ganctl.errors import ConfigError

    try:
        return fn(*args)
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint=hint) from None


SHOWN_CLASSES = 20  # class names inspect prints before "... (N classes)"


def _shown(key: str, value: Any) -> Any:
    """A config value as inspect's table shows it: a long class list cut short."""
    if value == "":
        return "(none)" if key in ("augment", "preset", "init_from") else "(default)"
    if key == "classes" and isinstance(value, (list, tuple)) and len(value) > SHOWN_CLASSES:
        return ", ".join(map(str, value[:SHOWN_CLASSES])) + f" ... ({len(value)} classes)"
    return value

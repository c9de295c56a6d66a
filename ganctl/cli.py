"""The `ganctl` command line: parse, call the engine, turn errors into exit codes.

Exit codes: 0 done; 1 a one-line error on stderr (traceback only with --debug); 2 a bad
command line (Typer's usage error); 128 + N stopped by signal N (SIGHUP 129, SIGINT 130,
SIGTERM 143 ...), with a one-line message (and with --json the JSON document) wherever it lands.
The user's output going away (a closed pipe or terminal) changes none of this.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shlex
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from inspect import Parameter, signature
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ganctl import __version__
from ganctl import metrics as registry
from ganctl.config import (
    BATCH_AUTO,
    DATA,
    DEFAULTS,
    GROUP_OF,
    GROUPS,
    MODEL,
    OUTPUT,
    REAL_PRESET,
    RUNTIME,
    SCHEDULE,
    SETTINGS,
    SHAPES_PRESET,
)
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

# --- shared options -------------------------------------------------------------------------------
REAL = "on real datasets"  # the datasets' own defaults (ganctl.data.REAL_PRESET), shown in help


def _default(key: str) -> str:
    """An option's default as its help shows it: the built-in shapes dataset's (what a bare
    `ganctl train` uses), and a real dataset's where that differs."""
    def shown(value: Any) -> Any:
        return {True: "on", False: "off", "": "none"}.get(value, value) if isinstance(
            value, (bool, str)) else value

    value = SHAPES_PRESET.get(key, DEFAULTS[key])
    real = REAL_PRESET.get(key, DEFAULTS[key])
    if real == value:
        return str(shown(value))
    return f"{shown(value)} on shapes, {shown(real)} {REAL}"


_KINDS: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


def _option_type(key: str) -> Any:
    """What a setting's option parses: its field's type, or its own (a switch for
    spectral_norm and compile, text for batch_size's N or auto)."""
    f = SETTINGS[key]
    return f.metadata["cli"].get("type") or _KINDS[str(f.type)]


def _setting_option(key: str, resume: bool) -> Any:
    """The option of a setting, made from its field in config.py: its help, panel, spelling
    and range; on resume its default is the run's own."""
    f = SETTINGS[key]
    cli = f.metadata["cli"]
    decl = cli.get("flag") or f"--{key.replace('_', '-')}"
    if _option_type(key) is bool:
        decl = f"{decl}/--no-{decl[2:]}"
    return typer.Option(
        decl, help=cli.get("resume_help", f.metadata["help"]) if resume else f.metadata["help"],
        show_default="the run's" if resume else cli.get("shown") or _default(key),
        rich_help_panel=f.metadata["panel"] or GROUPS[GROUP_OF[key]].PANEL,
        metavar=cli.get("metavar"), min=cli.get("min"), max=cli.get("max"))


def _with_settings(resume: bool) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A command taking every setting as an option (resume: those `resume` may change), made
    once from the config's fields; the command gets the ones given as `values`."""
    keys = [k for k, f in SETTINGS.items()
            if not f.metadata["cli"].get("hidden") and (f.metadata["resume"] or not resume)]

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        own = signature(fn, eval_str=True)
        params = [p.replace(kind=Parameter.KEYWORD_ONLY)
                  for p in own.parameters.values() if p.name != "values"]
        made = [Parameter(k, Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            _option_type(k) | None, _setting_option(k, resume)]) for k in keys]

        @functools.wraps(fn)
        def command(**given: Any) -> T:
            chosen = _given_settings(given)
            return fn(**{k: v for k, v in given.items() if k not in keys}, values=chosen)

        command.__signature__ = own.replace(parameters=[*made, *params])  # type: ignore[attr-defined]
        return command
    return decorate


Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.",
                                     rich_help_panel=RUNTIME)]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, "
                                    "nothing else (progress goes to stderr).",
                                    rich_help_panel=OUTPUT)]
Gpus = Annotated[int | None, typer.Option(
    min=1, max=1024, help="Train on N processes of this machine, one per GPU (with --device "
    "cpu: N CPU processes), through torch's launcher; for several machines use torchrun (see "
    "the README).", show_default="1", rich_help_panel=RUNTIME)]
DatasetOpt = Annotated[str | None, _setting_option("dataset", resume=False)]
DataDir = Annotated[str | None, _setting_option("data_dir", resume=False)]
Split = Annotated[str | None, _setting_option("split", resume=False)]
Download = Annotated[bool, typer.Option("--download/--no-download",
                                        help="Download a named dataset that is missing.",
                                        rich_help_panel=DATA)]
Crop = Annotated[str | None, _setting_option("crop", resume=False)]
MaxFileMb = Annotated[int | None, _setting_option("max_file_mb", resume=False)]
Resolution = Annotated[int | None, _setting_option("resolution", resume=False)]
Channels = Annotated[int | None, _setting_option("channels", resume=False)]
Inception = Annotated[str | None, _setting_option("inception", resume=False)]
MaxTime = Annotated[str | None, typer.Option(
    help="Time budget from the command's start, such as 3h30m, 90m or 45s: stop with a checkpoint "
         "(exit 0) while one more step and its checkpoint still fit; `ganctl resume` continues.",
    show_default="none", rich_help_panel=SCHEDULE)]


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


def _launch(processes: int, device: str | None, batch_size: str | None = None,
            batch_from: str = "--batch-size") -> None:
    """--gpus N: this command line again on N processes (torch's launcher); its exit code.
    `device` and `batch_size` (given by `batch_from`: the flag, a config file or the default)
    are checked first, before any process starts."""
    from ganctl.distributed import from_environment, launch, without_option

    if _call(False, from_environment) is not None:
        raise typer.BadParameter("already running under torchrun: its --nproc_per_node sets the "
                                 "processes, leave --gpus out", param_hint="--gpus")
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    on_cpu = device == "cpu"
    if not on_cpu and 0 < found < processes:
        raise typer.BadParameter(f"--gpus {processes} but this machine has {found} GPU(s); use "
                                 f"--gpus {found} or fewer", param_hint="--gpus")
    if device is not None and device.startswith("cuda") and not found:
        raise typer.BadParameter(f"--device {device} but no CUDA GPU is here; leave --device out "
                                 "or use --device cpu", param_hint="--device")
    batch = None if batch_size is None else _batch_size(batch_size)
    if batch == "auto":
        raise typer.BadParameter(f"auto finds a batch size for one process; with --gpus {processes} "
                                 f"give the global batch as a number divisible by {processes} "
                                 f"(auto's choice on one GPU times {processes}, say)",
                                 param_hint=batch_from)
    if isinstance(batch, int) and batch % processes:
        raise typer.BadParameter(f"batch size {batch} is the global batch and must divide among "
                                 f"the {processes} processes; use a multiple of {processes} "
                                 "(--batch-size)", param_hint=batch_from)
    if not on_cpu and not found and not _OUTPUT.json:
        _say(f"no CUDA GPU here: --gpus {processes} starts {processes} CPU processes (gloo)")
    _OUTPUT.at_stop = lambda: ("after telling every process to stop (each stops at the same step "
                               "and writes its checkpoint first: see the line above)", {})
    code = _call(False, launch, processes, without_option(_OUTPUT.argv, "--gpus"))
    _outcome_decided()
    if code:
        raise typer.Exit(code)


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


# --- train ----------------------------------------------------------------------------------------------

@app.command()
@_with_settings(resume=False)
def train(
    *,
    values: dict[str, Any],
    download: Download = True,
    list_presets: Annotated[bool, typer.Option(
        "--list-presets", help="List the presets (name, what for, settings) and exit.",
        rich_help_panel=MODEL)] = False,
    max_time: MaxTime = None,
    out: Annotated[Path | None, typer.Option(
        help="Run directory.", show_default="./runs/NNNN-<dataset>-<arch>; env GANCTL_RUNS "
        "moves ./runs", rich_help_panel=OUTPUT)] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="A TOML (or JSON) file of config keys; flags override it.",
        show_default="none", rich_help_panel=OUTPUT)] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the resolved settings, each with where it came from "
        "(default, dataset, preset, init-from, config file, flag), and exit without training.",
        rich_help_panel=OUTPUT)] = False,
    resume_run: Annotated[bool, typer.Option(
        "--resume", help="If --out already holds a run, continue it instead of refusing.",
        rich_help_panel=OUTPUT)] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="If --out already holds a run, delete its checkpoints, samples and "
        "logs and start again.", rich_help_panel=OUTPUT)] = False,
    json_mode: Json = False,
    gpus: Gpus = None,
    debug: Debug = False,
) -> None:
    """Train a GAN; writes a run directory with config, metrics, sample grids and checkpoints.

    Example: ganctl train --dataset shapes --steps 1500 --out runs/demo
    """
    from ganctl import settings
    from ganctl.api import run_training
    from ganctl.configfile import load_config_file
    from ganctl.output.progress import RunLog
    from ganctl.rundir import is_run_dir

    if list_presets:
        return _list_presets(json_mode)
    flags = values
    if resume_run and overwrite:
        raise typer.BadParameter("--resume and --overwrite exclude each other", param_hint="--resume")
    if (resume_run or overwrite) and out is None:
        raise typer.BadParameter("needs --out: the run directory to continue or replace",
                                 param_hint="--resume/--overwrite")
    if "init_from" in flags and resume_run:
        raise typer.BadParameter("--init-from starts a new run from a checkpoint's weights; "
                                 "--resume continues a run: use one", param_hint="--init-from")
    from_file = _call(debug, load_config_file, config) if config else {}
    if print_config:
        return _print_config(from_file, flags, config, json_mode, debug)
    if gpus is not None and gpus > 1:
        if resume_run and out is not None and is_run_dir(out):  # the run's own settings
            return _launch(gpus, flags.get("device"), _option_text(flags.get("batch_size")))
        # the settings each process would resolve, checked once here before any starts: a
        # config file's batch_size "auto" or a batch that does not divide among the processes
        resolved = _call(debug, settings.resolve_config, {**from_file, **flags})
        batch_from = ("--batch-size" if "batch_size" in flags else f"batch_size in {config}"
                      if "batch_size" in from_file else "the default batch size")
        return _launch(gpus, resolved.device, "auto" if resolved.batch_size == BATCH_AUTO
                       else str(resolved.batch_size), batch_from)
    _OUTPUT.training = "started"
    deadline = _call(debug, settings.deadline_from, max_time)
    log = _OUTPUT.log = RunLog(_console(json_mode))
    if resume_run and out is not None and is_run_dir(out):
        _OUTPUT.training = "resumed"
    result = _call(debug, lambda: run_training({**from_file, **flags}, out, log, resume=resume_run,
                                               overwrite=overwrite, download=download,
                                               deadline=deadline))
    _emit(json_mode, result.to_dict(), _done_message(result.to_dict()))


def _print_config(from_file: dict[str, Any], flags: dict[str, Any], path: Path | None,
                  json_mode: bool, debug: bool) -> None:
    """train --print-config: the settings a run would get, each with its source; nothing is
    trained or written."""
    from ganctl.settings import resolve_layers
    from ganctl.text import one_line

    layers = {f"config file {path}": from_file, "flag": flags} if path else {"flag": flags}
    resolved, sources = _call(debug, resolve_layers, layers)
    doc = resolved.to_dict()
    _outcome_decided()
    if json_mode:
        typer.echo(_json_text({"config": doc, "sources": sources}))
        return
    table = Table(show_header=True, box=None)  # cells are Text: a value is never read as markup
    for column in ("key", "value", "from"):
        table.add_column(column, style="bold" if column == "key" else None)
    for key, value in doc.items():
        shown = _shown(key, value)
        shown = ", ".join(map(str, shown)) or "none" if isinstance(shown, (list, tuple)) else shown
        if key == "batch_size" and value == BATCH_AUTO:
            shown = "auto"  # found when the run starts
        table.add_row(Text(key), Text(one_line(str(shown))), Text(sources[key]))
    Console(highlight=False).print(table)


def _given_settings(params: dict[str, Any]) -> dict[str, Any]:
    """The options given that are settings, as the config takes them."""
    chosen = {k: v for k in SETTINGS if (v := params.get(k)) is not None}
    if "batch_size" in chosen:  # --spectral-norm/--compile's booleans: settings.normalise
        chosen["batch_size"] = _batch_size(chosen["batch_size"])
    return chosen


def _option_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _batch_size(text: str) -> int | str:
    """--batch-size: a whole number from 1, or auto (left for the session to find)."""
    if text.strip().lower() == "auto":
        return "auto"
    digits = text.strip()
    value = int(digits) if digits.isascii() and digits.isdigit() else 0  # not "+8", "1_0", "٣"
    if value < 1:
        raise typer.BadParameter(f"{text!r} is not a whole number of 1 or more, nor auto",
                                 param_hint="--batch-size")
    return value


def _list_presets(json_mode: bool) -> None:
    from ganctl.presets import PRESETS

    if json_mode:
        typer.echo(_json_text({name: {"description": p.description, "settings": p.settings}
                               for name, p in PRESETS.items()}))
        return
    from ganctl.data import FOLDER_PRESET, preset

    for name, p in PRESETS.items():
        settings = " ".join(f"{k}={v}" for k, v in p.settings.items())
        data = p.settings.get("dataset")
        steps = p.settings.get("steps") or (preset(data) if data else FOLDER_PRESET)["steps"]
        length = (f"{steps:,} steps ({'its dataset' if data else 'a folder'}'s default; "
                  "--steps changes it)")
        typer.echo(f"{name}\n  {p.description}\n  {settings}\n  {length}")


def train_values(args: list[str]) -> dict[str, Any]:
    """The config values `ganctl train ARGS` starts from (its --config file under its flags),
    for tools that train in-process (benchmarks); bad flags raise click's UsageError."""
    from ganctl.configfile import load_config_file

    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    params = command.make_context("train", list(args)).params
    return {**(load_config_file(params["config"]) if params.get("config") else {}),
            **_given_settings(params)}


def _done_message(result: dict[str, Any]) -> str:
    state = "stopped (time budget)" if result.get("stopped") else "done"
    lines = [f"{state}: step {result['step']}/{result['steps']} in {result['seconds']:.1f}s, "
             f"run {result['run_dir']}"]
    if result["samples"]:
        lines.append(f"samples: {result['samples']}")
    lines.append(f"checkpoint: {result['checkpoint']}")
    lines.append(f"next: ganctl sample -n 64 out.png --ckpt {shlex.quote(result['run_dir'])}")
    return "\n".join(lines)


# --- resume ---------------------------------------------------------------------------------------------

@app.command()
@_with_settings(resume=True)
def resume(
    target: Annotated[str | None, typer.Argument(
        metavar="RUN_DIR|CKPT", help="Run directory or checkpoint (default: the newest run "
        "under ./runs).", show_default=False)] = None,
    *,
    values: dict[str, Any],
    download: Download = True,
    allow_data_change: Annotated[bool, typer.Option(
        "--allow-data-change", help="Continue even though the dataset changed since the run "
        "started.", rich_help_panel=DATA)] = False,
    max_time: MaxTime = None,
    gpus: Gpus = None,
    json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Continue a run from its newest checkpoint with the config stored in it (on any number
    of processes: --gpus, torchrun).

    Example: ganctl resume runs/0003-shapes-dcgan --steps 3000
    """
    from ganctl import settings
    from ganctl.api import run_resume
    from ganctl.output.progress import RunLog

    overrides = values
    if gpus is not None and gpus > 1:
        return _launch(gpus, overrides.get("device"))
    _OUTPUT.training = "resumed"
    deadline = _call(debug, settings.deadline_from, max_time)
    log = _OUTPUT.log = RunLog(_console(json_mode))
    result = _call(debug, lambda: run_resume(target, overrides, log, download=download,
                                                  allow_data_change=allow_data_change,
                                                  deadline=deadline))
    _emit(json_mode, result.to_dict(), _done_message(result.to_dict()))


# --- sample ---------------------------------------------------------------------------------------------

SAMPLES, BULK, MOTION = "What to draw", "Bulk export", "Interpolation"
MAX_GRID = 4096  # images in one grid file; more go to --out-dir


@app.command()
def sample(
    out_text: Annotated[str | None, typer.Argument(
        metavar="OUT", help="The image to write: .png, .jpg or .webp (a grid, or one image with "
        "-n 1); .gif, .mp4 or .png with --interpolate. Not with --out-dir.",
        show_default=False)] = None,
    n: Annotated[int | None, typer.Option(
        "-n", "--num", min=1, max=10_000_000, help="Number of images: seeds SEED..SEED+n-1 (at "
        f"most {MAX_GRID} in one file; more with --out-dir).",
        show_default="64; 8 a class with --class all; 4 seeds with --interpolate",
        rich_help_panel=SAMPLES)] = None,
    seed: Annotated[int | None, typer.Option(min=0, max=2**63 - 1, help="Image i uses latent "
                                             "seed SEED+i.", show_default="0",
                                             rich_help_panel=SAMPLES)] = None,
    seeds: Annotated[str | None, typer.Option(
        metavar="0-63,100", help="The seeds, as ranges and lists (one latent per seed: an image "
        "depends on its seed alone). Instead of -n/--seed.", show_default="none",
        rich_help_panel=SAMPLES)] = None,
    truncation: Annotated[float | None, typer.Option(
        metavar="PSI", help="Latents from the normal truncated to [-PSI, PSI] (a model with a "
        "mapping network: styles PSI of the way from their mean): lower is more typical, less "
        "varied (0: one image for every seed).", show_default="none",
        rich_help_panel=SAMPLES)] = None,
    class_: Annotated[str | None, typer.Option(
        "--class", metavar="K|NAME|all", help="Conditional models: the class by index or name, "
        "or all: one grid row per class.", show_default="seed mod the number of classes",
        rich_help_panel=SAMPLES)] = None,
    no_ema: Annotated[bool, typer.Option(
        "--no-ema", help="Sample G itself, not its EMA G_ema.", rich_help_panel=SAMPLES)] = False,
    nrow: Annotated[int | None, typer.Option(min=1, help="Images per grid row.",
                                             show_default="square", rich_help_panel=SAMPLES)] = None,
    scale: Annotated[int, typer.Option(min=1, max=64, help="Nearest-neighbour upscaling (a 32x32 "
                                       "model's grid at 4 is viewable).", rich_help_panel=SAMPLES)] = 1,
    out_dir: Annotated[Path | None, typer.Option(
        "--out-dir", metavar="DIR", help="Bulk export: one file per image, named by seed (class "
        "folders for conditional models), labels.csv and manifest.json; resumable.",
        show_default="none", rich_help_panel=BULK)] = None,
    fmt: Annotated[str | None, typer.Option(
        "--format", help="Bulk export: png, jpg, webp or npz (one file takes its format from "
        "OUT's suffix).", show_default="png", rich_help_panel=BULK)] = None,
    interpolate: Annotated[bool, typer.Option(
        "--interpolate", help="Spherical interpolation between the seeds' latents, looping: "
        "OUT.gif, OUT.mp4 (needs ffmpeg) or OUT.png (a row per pair).",
        rich_help_panel=MOTION)] = False,
    frames: Annotated[int, typer.Option(min=2, max=10_000, help="Frames of the whole loop.",
                                        rich_help_panel=MOTION)] = 60,
    fps: Annotated[int, typer.Option(min=1, max=60, help="Frames per second of a GIF or MP4.",
                                     rich_help_panel=MOTION)] = 20,
    loop: Annotated[bool, typer.Option("--loop/--no-loop", help="Back from the last seed to the "
                                       "first (a GIF that repeats without a jump).",
                                       rich_help_panel=MOTION)] = True,
    ckpt: Annotated[str | None, typer.Option(
        "--ckpt", metavar="CKPT|RUN_DIR", help="Checkpoint, run directory, latest or best.",
        show_default="the newest checkpoint under ./runs")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=65536, help="Latents per G call.",
                                            rich_help_panel=RUNTIME)] = 256,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:K | mps.",
                                        rich_help_panel=RUNTIME)] = "auto",
    json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Draw samples from a checkpoint's EMA generator: a grid, one image, a folder of many
    (--out-dir), or an interpolation (--interpolate).

    Example: ganctl sample -n 64 out.png --ckpt runs/0001-shapes-dcgan --seed 7
    """
    from ganctl import api
    from ganctl.sample import check_truncation
    from ganctl.seeds import parse_seeds

    if out_text is not None and out_text.endswith(("/", os.sep)):  # as typed: "new/" is a folder
        raise typer.BadParameter(f"{out_text} names a folder; give a file's name, like "
                                 f"{out_text}grid.png (or --out-dir {out_text} for one file per "
                                 "image)", param_hint="OUT")
    out = None if out_text is None else Path(out_text)
    if (out is None) == (out_dir is None):
        raise typer.BadParameter("give OUT (one file) or --out-dir DIR (one file per image)",
                                 param_hint="OUT")
    _check_modes(out, out_dir, interpolate, fmt, scale, nrow, class_, frames != 60 or fps != 20
                 or not loop, seeds is not None and (n is not None or seed is not None))
    seed = seed or 0
    default_n = 8 if class_ == "all" else 4 if interpolate else 64
    chosen = (_usage("--seeds", parse_seeds, seeds) if seeds is not None
              else list(range(seed, seed + (n or default_n))))
    if chosen[-1] > 2**63 - 1:
        raise typer.BadParameter(f"seeds {chosen[0]}..{chosen[-1]} go past 2**63 - 1; use a "
                                 "smaller --seed", param_hint="--seed")
    if truncation is not None:
        _usage("--truncation", check_truncation, truncation)
    drawing: dict[str, Any] = {"truncation": truncation, "class_": class_, "batch_size": batch_size,
               "device": device, "ema": not no_ema, "notes": _say}
    if out_dir is not None:
        return _bulk(ckpt, chosen, out_dir, fmt or "png", drawing, json_mode, debug)
    assert out is not None
    if interpolate:  # the walk's own errors as a bad command line
        from ganctl.interpolate import check_request

        _usage("--interpolate", check_request, chosen, frames, fps, scale, out, loop)
        motion = {"frames": frames, "fps": fps, "loop": loop, "scale": scale}
        return _interpolate(ckpt, chosen, out, motion, drawing, json_mode, debug)
    r = _call(debug, lambda: api.sample_to_file(ckpt, out, chosen, nrow=nrow, scale=scale,
                                                **drawing))
    images, which = (f"{r['n']} images", "seeds") if r["n"] > 1 else ("1 image", "seed")
    _emit(json_mode, r, f"wrote {r['out']}: {images} ({r['width']}x{r['height']} px) from "
                        f"{r['checkpoint']} (step {r['step']}), {which} {r['seeds']}, "
                        f"device {r['device']}")


def _check_modes(out: Path | None, out_dir: Path | None, interpolate: bool, fmt: str | None,
                 scale: int, nrow: int | None, class_: str | None, motion: bool,
                 seeds_twice: bool) -> None:
    """Options of another mode are a bad command line, not silently ignored (`motion`:
    --frames, --fps or --no-loop given; `seeds_twice`: --seeds with -n or --seed)."""
    from ganctl.bulk import FORMATS

    def bad(message: str, hint: str) -> None:
        raise typer.BadParameter(message, param_hint=hint)

    if interpolate and out_dir is not None:
        bad("--interpolate writes one file (OUT.gif, .mp4 or .png), not --out-dir", "--interpolate")
    if not interpolate and motion:
        bad("--frames, --fps and --no-loop are for --interpolate", "--interpolate")
    if seeds_twice:
        bad("--seeds names the seeds itself: leave out -n and --seed", "--seeds")

    if fmt is not None and out_dir is None:
        bad("--format is for --out-dir; one file takes its format from OUT's suffix "
            "(.png, .jpg, .webp)", "--format")
    if fmt is not None and fmt.lower() not in (*FORMATS, "jpeg"):
        bad(f"{fmt!r} is not one of {', '.join(FORMATS)}", "--format")
    if out_dir is not None and (scale != 1 or nrow is not None):
        bad("--scale and --nrow shape a grid or one image; --out-dir writes each image at the "
            "model's size", "--scale/--nrow")
    if interpolate and nrow is not None:
        bad("--interpolate's PNG has one row per pair of seeds; leave --nrow out", "--nrow")
    if class_ == "all" and (interpolate or out_dir is not None):
        bad("--class all draws a grid with a row per class; with --out-dir or --interpolate give "
            "one class (index or name), or leave --class out", "--class")
    if out is not None and not interpolate and out.suffix.lower() in (".gif", ".mp4"):
        bad(f"{out.name}: .gif and .mp4 are for --interpolate; a grid is .png, .jpg or .webp",
            "OUT")
    from ganctl.imagefiles import IMAGE_FORMATS

    hidden = out is not None and out.name.startswith(".") and not out.suffix  # check_out refuses it
    if out is not None and not interpolate and not hidden and out.suffix.lower() not in IMAGE_FORMATS:
        bad(f"{out.name}: the image's name must end in .png, .jpg, .jpeg or .webp (its format)",
            "OUT")


def _usage(hint: str, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args), its ConfigError a bad command line (exit 2) naming the option `hint`: for
    checks of an option's own text, which need no checkpoint."""
    from ganctl.errors import ConfigError

    try:
        return fn(*args)
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint=hint) from None


def _bulk(ckpt: str | None, seeds: list[int], out_dir: Path, fmt: str, drawing: dict[str, Any],
          json_mode: bool, debug: bool) -> None:
    """sample --out-dir: one file per seed, resumable (api.export_images)."""
    from ganctl import api
    from ganctl.output.progress import RunLog

    log = RunLog(_console(json_mode))
    done = {"count": 0, "of": len(seeds)}
    bar: list[Callable[[int], None]] = []

    def start(count: int) -> None:  # once the settings are checked and the folder scanned
        done["of"] = count
        more = (f" ({len(seeds)} asked for, and the rest of the export already there)"
                if count != len(seeds) else "")
        bar.append(log.task(f"writing {count} images into {out_dir}{more}", count))

    def progress(k: int) -> None:
        done["count"] += k
        bar[0](k)

    def at_stop() -> tuple[str, dict[str, Any]]:
        if not bar:
            return "before any image was written", {}
        return (f"with {done['count']:,} of {done['of']:,} images in {out_dir}; run the same "
                "command again to finish (the files there are kept)",
                {"out_dir": str(out_dir), "done": done["count"], "count": done["of"]})

    _OUTPUT.at_stop = at_stop
    r = _call(debug, lambda: api.export_images(ckpt, out_dir, seeds, format=fmt, progress=progress,
                                               start=start, **drawing))
    speed = f"at {r['images_per_s']:,.0f} img/s" if r["written"] else "nothing left to write"
    _emit(json_mode, r, f"{out_dir}: {r['count']} images ({r['written']} written, {r['skipped']} "
                        f"already there), {speed}")


def _interpolate(ckpt: str | None, seeds: list[int], out: Path, motion: dict[str, Any],
                 drawing: dict[str, Any], json_mode: bool, debug: bool) -> None:
    """sample --interpolate (api.interpolate)."""
    from ganctl import api

    r = _call(debug, lambda: api.interpolate(ckpt, out, seeds, **motion, **drawing))
    through = f"seeds {', '.join(map(str, seeds))}"
    if r["format"] != "png":
        return _emit(json_mode, r, f"wrote {r['out']}: {r['frames']} frames ({r['width']}x"
                                   f"{r['height']} px) through {through}")
    cut = (f"; a PNG row holds at most {r['columns']} images, not the {r['columns_asked']} that "
           f"--frames {motion['frames']} asks for: a .gif or .mp4 shows every frame"
           if r["columns_asked"] > r["columns"] else "")
    _emit(json_mode, r, f"wrote {r['out']}: a grid of {r['rows']} rows (one per pair of {through}"
                        f"{', back to the first' if motion['loop'] else ''}) of {r['columns']} "
                        f"images each ({r['width']}x{r['height']} px){cut}")


@app.command()
def export(
    paths: Annotated[list[str], typer.Argument(
        metavar="[CKPT|RUN_DIR] OUT", help="The checkpoint, run directory, latest or best (default: "
        "the newest checkpoint under ./runs), then the file to write (.pt for torchscript, .onnx "
        "for onnx, by convention).", show_default=False)],
    fmt: Annotated[str | None, typer.Option("--format", help="torchscript or onnx (needs: pip "
                                            "install onnx onnxruntime).",
                                            show_default="from OUT: .onnx is onnx, else torchscript")] = None,
    no_ema: Annotated[bool, typer.Option("--no-ema", help="Export G itself, not G_ema.")] = False,
    json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Export the generator to run without ganctl: inputs z (B, z_dim) float32 (and c (B,) int64
    for a conditional model), output images (B, C, H, W) in [-1, 1]; any batch size. The file is
    checked against the PyTorch generator on fixed latents before it is kept.

    Example: ganctl export runs/0001-shapes-dcgan g.onnx --format onnx
    """
    from ganctl import api

    if len(paths) > 2:
        raise typer.BadParameter("give at most a checkpoint and OUT", param_hint="[CKPT|RUN_DIR] OUT")
    target, out = (None, paths[0]) if len(paths) == 1 else (paths[0], paths[1])
    if len(paths) == 1 and (Path(out).is_dir() or Path(out).suffix.lower() == ".safetensors"
                            or out in ("latest", "best")):
        raise typer.BadParameter(f"{out} is what to export; give OUT, the file to write, "
                                 f"after it: ganctl export {out} g.pt", param_hint="OUT")
    r = _call(debug, lambda: api.export(target, out, format=fmt, ema=not no_ema, notes=_say))
    takes = f"z (B, {r['z_dim']})" + (f" and c (B,) of {len(r['classes'])} classes" if r["classes"] else "")
    _emit(json_mode, r, f"wrote {r['out']} ({r['format']}, {r['bytes'] / 1e6:.1f} MB): takes "
                        f"{takes}, gives images (B, {r['channels']}, {r['resolution']}, "
                        f"{r['resolution']}) in [-1, 1]; the same images as the checkpoint's "
                        f"generator within {r['max_abs_diff']:.1e} (batch sizes "
                        f"{', '.join(map(str, r['checked_batch_sizes']))})")


# --- inspect --------------------------------------------------------------------------------------------

SHOWN_CLASSES = 20  # class names inspect prints before "... (N classes)"


def _shown(key: str, value: Any) -> Any:
    """A config value as inspect's table shows it: a long class list cut short."""
    if value == "":
        return "(none)" if key in ("augment", "preset", "init_from") else "(default)"
    if key == "classes" and isinstance(value, (list, tuple)) and len(value) > SHOWN_CLASSES:
        return ", ".join(map(str, value[:SHOWN_CLASSES])) + f" ... ({len(value)} classes)"
    return value


def _date(value: Any) -> str:
    """A time (ISO 8601 text or seconds since the epoch) as a local date and time."""
    from ganctl.text import date_time

    return date_time(value)


@app.command()
def inspect(
    target: Annotated[str | None, typer.Argument(
        metavar="CKPT|RUN_DIR", help="Checkpoint or run directory (default: the newest "
        "checkpoint under ./runs).", show_default=False)] = None,
    verify: Annotated[bool, typer.Option(
        "--verify/--no-verify", help="Check the data against its checksum (--no-verify reads the "
        "header alone).")] = True,
    json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Show a checkpoint's step, config, parameter counts and last losses (no tensors loaded).

    Example: ganctl inspect runs/0001-shapes-dcgan --json
    """
    from ganctl import api
    from ganctl.text import printable

    info = _call(debug, lambda: api.inspect(target, verify=verify, notes=_say))
    path = info["path"]
    _outcome_decided()
    if json_mode:
        typer.echo(_json_text(info))
        return
    console = Console(highlight=False)
    console.print(printable(f"checkpoint {path}"), markup=False, soft_wrap=True)
    table = Table(show_header=False)  # cells are Text: a config value is never read as markup
    table.add_column("key", style="bold")
    table.add_column("value")
    rows = [("version", f"{info['version']} (schema {info['schema']})"),
            ("step", info["step"]), ("created", _date(info["created"])),
            ("trained on", f"{info['device'] or '?'}" + (f", {info['processes']} processes"
                                                        if info["processes"] > 1 else "")),
            ("file size", f"{info['file_size'] / 1e6:.2f} MB"),
            ("params", f"G {info['params']['G']:,}  D {info['params']['D']:,}"),
            *((k, _shown(k, v)) for k, v in info["config"].items()),
            *((f"last {k}", v) for k, v in (info["metrics"] or {}).items()
              if k not in ("step", "time"))]
    if isinstance((info["metrics"] or {}).get("time"), (int, float)):
        rows.append(("last logged", _date(info["metrics"]["time"])))
    if (scored := info["eval"]) and isinstance(scored.get("fid"), (int, float)):
        rows.append(("FID", f"{scored['fid']:.3f} ({scored.get('num_fake')} fakes vs "
                            f"{scored.get('num_real')} reals)"))
    if (best := info["best"]) and best["fid"] is not None:
        where = f" ({Path(best['checkpoint']).name})" if best["checkpoint"] else ""
        rows.append(("best FID", f"{best['fid']:.3f} at step {best['step']}{where}"))
    for key, value in rows:
        if isinstance(value, (list, tuple)):  # class names
            value = ", ".join(map(str, value)) or "none"
        table.add_row(Text(printable(str(key))), Text(printable(str(value))))
    console.print(table)


# --- eval -------------------------------------------------------------------------------------------------

@app.command("eval")
def eval_(
    target: Annotated[str | None, typer.Argument(
        metavar="CKPT|RUN_DIR", help="Checkpoint or run directory, or latest / best (default: "
        "the newest checkpoint under ./runs).", show_default=False)] = None,
    metrics: Annotated[str, typer.Option(help=f"{registry.names_help()}, comma-separated.")] = "fid,kid",
    num: Annotated[int, typer.Option("--num", min=2, max=10_000_000, help="Fakes to score (G_ema, "
                                     "latent seeds 0..N-1); 50000 is NVlabs' fid50k_full.")] = 50000,
    num_real: Annotated[int | None, typer.Option(
        min=2, max=100_000_000, help="Real images, in a fixed random order (default: all of them).")] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Score against this dataset instead of the run's own (at the run's "
        "resolution, channels and crop).")] = None,
    split: Split = None,
    data_dir: DataDir = None,
    max_file_mb: MaxFileMb = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:K | mps.")] = "auto",
    inception: Inception = None,
    download: Annotated[bool, typer.Option(
        "--download/--no-download", help="Download the Inception file or a named dataset that "
        "is missing.")] = True,
    json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Score a checkpoint's G_ema with FID, KID and precision/recall against its training data.

    The TF Inception-v3 features GAN papers use, uint8 images resized to 299x299 (bilinear);
    real statistics are cached. The result is also appended to the run's metrics.jsonl.

    Example: ganctl eval runs/0001-shapes-dcgan --num 10000 --metrics fid,kid --json
    """
    from ganctl.api.scores import run_evaluation
    from ganctl.metrics import parse_metrics
    from ganctl.output.progress import RunLog
    from ganctl.scoring import EVAL_OPTIONS

    names = _call(debug, parse_metrics, metrics)
    data = _given(dataset=dataset, split=split, data_dir=data_dir, max_file_mb=max_file_mb)
    doc = _call(debug, lambda: run_evaluation(target, names, num, num_real, data, device, inception,
                                              download, RunLog(_console(json_mode)), EVAL_OPTIONS,
                                              _say))
    _outcome_decided()
    if json_mode:
        typer.echo(_json_text(doc))
        return
    _eval_table(doc)


def _eval_table(doc: dict[str, Any]) -> None:
    from ganctl.text import printable

    net = doc["feature_net"]
    console = Console(highlight=False)
    console.print(printable(f"{doc['checkpoint']} (step {doc['step']}) against {doc['dataset']}"
                            + (f" ({doc['split']})" if doc["split"] else "") + f"; Inception "
                            f"{net['sha256'][:12]} ({net['form']}), protocol "
                            f"v{doc['protocol']['version']}"), markup=False, soft_wrap=True)
    table = Table()
    for column in ("metric", "value", "real", "fake", "seconds"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    rows = registry.format_rows(doc["metrics"])
    for name, value in rows:
        table.add_row(Text(name), value, str(doc["num_real"]), str(doc["num_fake"]),
                      f"{doc['seconds']:.1f}")
    console.print(table)


# --- runs and plot -------------------------------------------------------------------------------

@app.command()
def runs(
    root: Annotated[Path | None, typer.Argument(
        metavar="DIR", help="Where the runs are (or one run).", show_default="./runs, or env "
        "GANCTL_RUNS")] = None,
    json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """List the runs: status (running, stopped, complete, diverged, new, broken), step, last
    losses, best FID, last update and size.

    Example: ganctl runs --json
    """
    from ganctl import api
    from ganctl.rundir import runs_root
    from ganctl.runs import format_runs

    found = _call(debug, api.runs, root)
    _emit(json_mode, {"root": str(root or runs_root()), "runs": found}, format_runs(found, root))


@app.command()
def plot(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A run directory.")],
    out: Annotated[Path | None, typer.Argument(
        metavar="OUT.png", help="Where to write the PNG.", show_default="RUN/curves.png")] = None,
    json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Draw a run's losses, D outputs, img/s and evaluation scores against step as a PNG
    (training refreshes RUN/curves.png at each sample step).

    Example: ganctl plot runs/0001-shapes-dcgan losses.png
    """
    from ganctl import api

    r = _call(debug, api.plot, run, out)
    _emit(json_mode, r, f"wrote {r['out']}")


# --- data ---------------------------------------------------------------------------------------------

data_app = typer.Typer(help="Prepare and describe datasets (the decode cache). Example: ganctl "
                            "data prepare --dataset cifar10", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _data_report(dataset: str | None, data_dir: str | None, split: str | None,
                 resolution: int | None, channels: int | None, crop: str | None,
                 max_file_mb: int | None, download: bool, json_mode: bool, debug: bool
                 ) -> dict[str, Any]:
    from ganctl.data import default_split, load_dataset
    from ganctl.output.progress import RunLog
    from ganctl.settings import resolve_config

    values = _given(dataset=dataset, data_dir=data_dir, split=split, resolution=resolution,
                    channels=channels, crop=crop, max_file_mb=max_file_mb, batch_size=1)
    config = _call(debug, resolve_config, values)
    log = RunLog(_console(json_mode))
    data = _call(debug, load_dataset, config, download, log.task)
    report = data.report
    return {"dataset": config.dataset, "split": config.split or default_split(config.dataset),
            "count": len(data.images), "resolution": config.resolution,
            "channels": config.channels, "crop": config.crop, "classes": data.classes,
            "skipped": report.get("skipped", 0),
            "skipped_by_reason": report.get("skipped_by_reason", {}),
            "fingerprint": data.fingerprint, "cache": report.get("cache"),
            "bytes": int(data.images.nbytes), **_call(debug, data.label_report),
            "warnings": _call(debug, data.label_warnings)}


@data_app.command("prepare")
def data_prepare(
    dataset: DatasetOpt = None, data_dir: DataDir = None, split: Split = None,
    resolution: Resolution = None, channels: Channels = None, crop: Crop = None,
    max_file_mb: MaxFileMb = None, download: Download = True, json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Decode a dataset into the cache ahead of training (downloading it if needed).

    Example: ganctl data prepare --dataset celeba --resolution 64
    """
    r = _data_report(dataset, data_dir, split, resolution, channels, crop, max_file_mb, download,
                     json_mode, debug)
    _emit(json_mode, r, f"ready: {r['dataset']} {r['count']} images "
                        f"{r['resolution']}x{r['resolution']}x{r['channels']} "
                        f"({r['bytes'] / 1e6:.1f} MB) in {r['cache'] or 'memory (built in)'}")


@data_app.command("info")
def data_info(
    dataset: DatasetOpt = None, data_dir: DataDir = None, split: Split = None,
    resolution: Resolution = None, channels: Channels = None, crop: Crop = None,
    max_file_mb: MaxFileMb = None, download: Download = True, json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Count, resolution, channels, classes and skipped files of a dataset (decoding it once).

    Example: ganctl data info --dataset ./my_images --json
    """
    r = _data_report(dataset, data_dir, split, resolution, channels, crop, max_file_mb, download,
                     json_mode, debug)
    counts = r.get("class_counts", {})
    from ganctl.text import one_line

    classes = ", ".join(f"{one_line(c)} ({counts[c]})" if c in counts else one_line(c)
                        for c in r["classes"][:20]) + (
        " ..." if len(r["classes"]) > 20 else "")
    skipped = ", ".join(f"{n} {one_line(why)}" for why, n in r["skipped_by_reason"].items())
    lines = [f"dataset     {one_line(r['dataset'])}" + (f" ({r['split']})" if r["split"] else ""),
             f"images      {r['count']}",
             f"resolution  {r['resolution']}x{r['resolution']}, {r['channels']} channel(s), "
             f"crop {r['crop']}",
             f"classes     {len(r['classes'])}" + (f": {classes}" if classes else ""),
             f"skipped     {r['skipped']}" + (f" ({skipped})" if skipped else ""),
             f"cache       {r['cache'] or 'none (generated in memory)'}",
             f"fingerprint {r['fingerprint']}",
             *(f"note        {w}" for w in r["warnings"])]
    _emit(json_mode, r, "\n".join(lines))


cache_app = typer.Typer(help="Show and remove decode caches and cached FID statistics. "
                             "Example: ganctl data cache list", no_args_is_help=True)
data_app.add_typer(cache_app, name="cache")
CacheDir = Annotated[Path | None, typer.Option(
    "--cache-dir", help="The cache folder.", show_default="env GANCTL_CACHE_DIR, else "
    "~/.cache/ganctl/decoded")]


@cache_app.command("list")
def cache_list(cache_dir: CacheDir = None, json_mode: Json = False, debug: Debug = False) -> None:
    """Each decoded dataset and FID statistics file in the cache, with its size and last use.

    Example: ganctl data cache list --json
    """
    from ganctl.data.cachedir import format_caches, list_caches

    entries = _call(debug, list_caches, cache_dir)
    _outcome_decided()
    if json_mode:
        typer.echo(_json_text({"caches": [e.to_dict() for e in entries],
                               "bytes": sum(e.bytes for e in entries)}))
        return
    typer.echo(format_caches(entries, cache_dir))


@cache_app.command("clean")
def cache_clean(
    names: Annotated[list[str] | None, typer.Argument(
        metavar="[NAME]...", help="Caches to remove, by name or dataset.", show_default="all")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Remove without asking.")] = False,
    cache_dir: CacheDir = None,
    json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Remove cached datasets and statistics (all, or those named); asks first unless --yes.
    A run decodes its data again when it next needs it.

    Example: ganctl data cache clean cifar10 --yes
    """
    from ganctl.data.cachedir import format_caches, list_caches, select_caches
    from ganctl.text import human_bytes

    entries = _call(debug, list_caches, cache_dir)
    if names:
        entries = _call(debug, select_caches, entries, names)
    busy = [e.name for e in entries if e.state == "writing"]
    for name in busy:  # a run is decoding it now
        _say(f"{name} is being written by a running process: left alone")
    entries = [e for e in entries if e.state != "writing"]
    if not entries:
        _emit(json_mode, {"removed": [], "freed_bytes": 0}, "nothing to remove")
        return
    if not yes:
        if json_mode or not sys.stdin.isatty():
            _fail("removing caches needs --yes when nothing can ask (no terminal, or --json)")
        typer.echo(format_caches(entries, cache_dir))
        what = "this cache" if len(entries) == 1 else f"these {len(entries)} caches"
        if not typer.confirm(f"remove {what}?", default=False):
            _fail("nothing removed")
    from ganctl.data.cachedir import clean_caches

    freed = _call(debug, clean_caches, entries)
    _emit(json_mode, {"removed": [e.name for e in entries], "freed_bytes": freed},
          f"removed {len(entries)} cache{'s' if len(entries) != 1 else ''}, {human_bytes(freed)} freed")


def _paragraphs_on_one_line(doc: str) -> str:
    """A docstring with each paragraph on one line: rich keeps the source's line breaks inside
    a paragraph (the command list showed "... on any number" / "of processes"), and wraps one
    line at the terminal's width itself."""
    from inspect import cleandoc

    return "\n\n".join(" ".join(part.split()) for part in cleandoc(doc).split("\n\n"))


for _commands in (app, data_app, cache_app):
    for _info in _commands.registered_commands:
        _info.help = _paragraphs_on_one_line(_info.help or _info.callback.__doc__ or "")

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

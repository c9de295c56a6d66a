"""`ganctl train` and `ganctl resume`."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ganctl.cli import core
from ganctl.cli.core import (
    _call,
    _console,
    _emit,
    _json_text,
    _outcome_decided,
    _say,
    _shown,
    app,
)
from ganctl.cli.options import (
    Debug,
    Download,
    Gpus,
    Json,
    MaxTime,
    _batch_size,
    _given_settings,
    _option_text,
    _with_settings,
)
from ganctl.config import BATCH_AUTO, DATA, MODEL, OUTPUT

# --- train ----------------------------------------------------------------------------------------------

_ListPresets = Annotated[bool, typer.Option(
    "--list-presets", help="List the presets (name, what for, settings) and exit.",
    rich_help_panel=MODEL)]
_Out = Annotated[Path | None, typer.Option(
    help="Run directory.", show_default="./runs/NNNN-<dataset>-<arch>; env GANCTL_RUNS "
    "moves ./runs", rich_help_panel=OUTPUT)]
_ConfigFile = Annotated[Path | None, typer.Option(
    "--config", help="A TOML (or JSON) file of config keys; flags override it.",
    show_default="none", rich_help_panel=OUTPUT)]
_PrintConfig = Annotated[bool, typer.Option(
    "--print-config", help="Print the resolved settings, each with where it came from "
    "(default, dataset, architecture, preset, init-from, config file, flag), and exit without "
    "training.", rich_help_panel=OUTPUT)]
_ResumeRun = Annotated[bool, typer.Option(
    "--resume", help="If --out already holds a run, continue it instead of refusing.",
    rich_help_panel=OUTPUT)]
_Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="If --out already holds a run, delete its checkpoints, samples and "
    "logs and start again.", rich_help_panel=OUTPUT)]


@app.command()
@_with_settings(resume=False)
def train(
    *,
    values: dict[str, Any],
    download: Download = True,
    list_presets: _ListPresets = False,
    max_time: MaxTime = None,
    out: _Out = None,
    config: _ConfigFile = None,
    print_config: _PrintConfig = False,
    resume_run: _ResumeRun = False,
    overwrite: _Overwrite = False,
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
        return _print_config(from_file, flags, config, json_mode, debug, gpus)
    if gpus is not None and gpus > 1:
        if resume_run and out is not None and is_run_dir(out):  # the run's own settings
            return _launch(gpus, flags.get("device"), _option_text(flags.get("batch_size")))
        # the settings each process would resolve, checked once here before any starts: a
        # config file's batch_size "auto" or a batch that does not divide among the processes
        resolved = _call(debug, lambda: settings.resolve_config({**from_file, **flags}, gpus))
        batch_from = ("--batch-size" if "batch_size" in flags else f"batch_size in {config}"
                      if "batch_size" in from_file else "the default batch size")
        return _launch(gpus, resolved.device, "auto" if resolved.batch_size == BATCH_AUTO
                       else str(resolved.batch_size), batch_from)
    core._OUTPUT.training = "started"
    deadline = _call(debug, settings.deadline_from, max_time)
    log = core._OUTPUT.log = RunLog(_console(json_mode))
    if resume_run and out is not None and is_run_dir(out):
        core._OUTPUT.training = "resumed"
    result = _call(debug, lambda: run_training({**from_file, **flags}, out, log, resume=resume_run,
                                               overwrite=overwrite, download=download,
                                               deadline=deadline))
    _emit(json_mode, result.to_dict(), _done_message(result.to_dict()))


def _print_config(from_file: dict[str, Any], flags: dict[str, Any], path: Path | None,
                  json_mode: bool, debug: bool, gpus: int | None = None) -> None:
    """train --print-config: the settings a run would get, each with its source; nothing is
    trained or written."""
    from ganctl.settings import resolve_layers
    from ganctl.text import one_line

    layers = {f"config file {path}": from_file, "flag": flags} if path else {"flag": flags}
    resolved, sources = _call(debug, lambda: resolve_layers(layers, gpus))
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
    core._OUTPUT.training = "resumed"
    deadline = _call(debug, settings.deadline_from, max_time)
    log = core._OUTPUT.log = RunLog(_console(json_mode))
    result = _call(debug, lambda: run_resume(target, overrides, log, download=download,
                                                  allow_data_change=allow_data_change,
                                                  deadline=deadline))
    _emit(json_mode, result.to_dict(), _done_message(result.to_dict()))


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
    if not on_cpu and not found and not core._OUTPUT.json:
        _say(f"no CUDA GPU here: --gpus {processes} starts {processes} CPU processes (gloo)")
    core._OUTPUT.at_stop = lambda: ("after telling every process to stop (each stops at the same step "
                               "and writes its checkpoint first: see the line above)", {})
    code = _call(False, launch, processes, without_option(core._OUTPUT.argv, "--gpus"))
    _outcome_decided()
    if code:
        raise typer.Exit(code)

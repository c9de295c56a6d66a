"""The options commands share, and every setting's option made from its field in config.py
(train takes them all, resume those it may change)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from inspect import Parameter, signature
from typing import Annotated, Any

import typer

from ganctl.cli.core import T
from ganctl.config import (
    DATA,
    DEFAULTS,
    GROUP_OF,
    GROUPS,
    OUTPUT,
    REAL_PRESET,
    RUNTIME,
    SCHEDULE,
    SETTINGS,
    SHAPES_PRESET,
)

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


def _setting_option(key: str, resume: bool, panel: bool = True, runs_own: bool = False) -> Any:
    """The option of a setting, made from its field in config.py: its help, panel, spelling
    and range; on resume (and where a run's own value is the default) its default is the
    run's; a setting resume may not change is a hidden option there, refused with a message
    that says so. panel=False: in the command's one Options panel; runs_own: the default is
    the run's (eval's data options)."""
    f = SETTINGS[key]
    cli = f.metadata["cli"]
    decl = cli.get("flag") or f"--{key.replace('_', '-')}"
    if _option_type(key) is bool:
        decl = f"{decl}/--no-{decl[2:]}"
    return typer.Option(
        decl, help=cli.get("resume_help", f.metadata["help"]) if resume else f.metadata["help"],
        show_default="the run's" if resume or runs_own else cli.get("shown") or _default(key),
        rich_help_panel=(f.metadata["panel"] or GROUPS[GROUP_OF[key]].PANEL) if panel else None,
        metavar=cli.get("metavar"), min=cli.get("min"), max=cli.get("max"),
        hidden=resume and not f.metadata["resume"])


def _with_settings(resume: bool) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A command taking every setting as an option (resume shows those it may change), made
    once from the config's fields; the command gets the ones given as `values`."""
    keys = [k for k, f in SETTINGS.items() if not f.metadata["cli"].get("hidden")]

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

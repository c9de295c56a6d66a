"""The Python surface's argument checks: every public function checks what it is given before
anything runs, and raises ganctl's own errors with the command line's messages."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from rich.console import Console

from ganctl import rundir
from ganctl.checkpoint import Header
from ganctl.errors import ConfigError, DeviceError, GanctlError, os_error_message, shorten
from ganctl.output.console import QuietOnClosedPipe
from ganctl.seeds import brief_repr, whole

PathLike = str | os.PathLike[str]
DEVICES = "auto, cpu, cuda, cuda:K or mps"
Notes = Callable[[str], None]
F = TypeVar("F", bound=Callable[..., Any])


def ganctl_errors(fn: F) -> F:
    """A public function whose failures are all ganctl's own errors: what the operating system
    refused (a name too long, a full disk, permissions) and memory running out raise GanctlError
    with the command line's one-line message, not OSError or MemoryError from deep inside."""
    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GanctlError:
            raise
        except OSError as e:
            raise GanctlError(os_error_message(e)) from e
        except MemoryError as e:
            raise GanctlError("out of memory: the checkpoint, model, images or dataset are too "
                              "large for this machine") from e
    return checked  # type: ignore[return-value]


def flag(name: str, value: object) -> None:
    """True or False, nothing else: quiet="no" would be true, download=None false."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {got(value)}")


def path(name: str, value: object, what: str) -> None:
    """A path given as a str or an os.PathLike of str (pathlib.Path), or None; bytes are not
    (os.fsdecode decodes them)."""
    if value is None:
        return
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if isinstance(text, str):
        if "\x00" in text:
            raise ConfigError(f"{name} {shorten(text)} holds a NUL character, which no path can")
        return
    hint = "; decode it with os.fsdecode" if isinstance(text, bytes) else ""
    raise ConfigError(f"{name} must be {what} (a str or pathlib.Path), got "
                      f"{got(value)}{hint}")


def got(value: object) -> str:
    """A wrong value for a message: its type and a short repr ("int 3", "bytes b'r'", "None")."""
    return "None" if value is None else f"{type(value).__name__} {brief_repr(value)}"


def device_name(device: object) -> str:
    """A device as resolve_device takes it: its name, or a torch.device's."""
    if isinstance(device, torch.device):
        return str(device)
    if not isinstance(device, str):
        raise DeviceError(f"unknown device {got(device)}; use {DEVICES} (a str or a torch.device)")
    return device


def whole_number(name: str, value: Any, low: float, high: float | None = None,
                 note: str = "") -> int:
    """value as an int (numpy's integers too, not bools or 2.0) from low to high, or a
    ConfigError in the words of `ganctl`'s range checks."""
    number = whole(value)
    if number is None or number < low or (high is not None and number > high):
        span = f"from {int(low):,}" + (f" to {int(high):,}" if high is not None else "")
        raise ConfigError(f"{name} must be a whole number {span}{note}, got {brief_repr(value)}")
    return number


def console(quiet: bool) -> Console:
    # stderr, like the command line's progress: stdout stays the caller's
    return QuietOnClosedPipe(stderr=True, highlight=False, quiet=quiet)


def locate(target: PathLike | None, notes: Notes | None = None) -> Header:
    """rundir.locate: each damaged checkpoint it passed over a note (default: a warning at the
    caller's line)."""
    path("target", target, "a run directory, a checkpoint path, 'latest' or 'best'")
    passed: list[str] = []
    header = rundir.locate(None if target is None else os.fspath(target), passed.append)
    for message in passed:
        if notes is not None:
            notes(message)
        else:
            warnings.warn(message, stacklevel=4)  # at the line calling load() or evaluate()
    return header

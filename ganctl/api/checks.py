"""The Python surface's argument checks: every public function checks what it is given before
anything runs, and raises ganctl's own errors with the command line's messages."""

from __future__ import annotations

import functools
import inspect
import numbers
import os
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from rich.console import Console

from ganctl.checkpoint import Header
from ganctl.errors import (
    ConfigError,
    DeviceError,
    GanctlError,
    UsageError,
    did_you_mean,
    os_error_message,
    shorten,
)
from ganctl.importers import convert
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
    arguments = inspect.signature(fn)
    params = arguments.parameters

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            arguments.bind(*args, **kwargs)
        except TypeError as e:  # an unknown keyword, a missing or an extra argument
            unknown = [k for k in kwargs if k not in params]
            hint = did_you_mean(unknown[0], tuple(params)) if unknown else ""
            raise ConfigError(f"{fn.__name__}(): {e}{hint}") from None
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


def path(name: str, value: object, what: str, required: bool = False) -> None:
    """A path given as a str or an os.PathLike of str (pathlib.Path), or None where it is not
    `required`; bytes are not (os.fsdecode decodes them), nor an empty string, nor one the
    file system cannot name (a NUL, a lone surrogate)."""
    if value is None and not required:
        return
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if isinstance(text, str):
        if "\x00" in text:
            raise ConfigError(f"{name} {shorten(text)} holds a NUL character, which no path can")
        if not text:
            raise ConfigError(f"{name} is an empty path; give {what}")
        try:
            os.fsencode(text)
        except UnicodeEncodeError:
            raise ConfigError(f"{name} {ascii(text)[1:-1]} holds a lone surrogate, which no file "
                              "name can; write the character itself") from None
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


def callback(name: str, value: object) -> None:
    """None or something to call (notes, progress ...)."""
    if value is not None and not callable(value):
        raise ConfigError(f"{name} must be a function (or None), got {got(value)}")


def plain(value: Any) -> Any:
    """A setting as TOML would give it: a path as its string, numpy's integers as int and its
    floats as float (a notebook's np.int64(64) is a batch size); anything else as it is, for the
    config's own checks to judge."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (bool, int, float, str)):
        return value
    number = whole(value)
    if number is not None:
        return number
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:  # Fraction(10**400): left to the config's "a float can hold"
            return value
    return value


def console(quiet: bool) -> Console:
    # stderr, like the command line's progress: stdout stays the caller's
    return QuietOnClosedPipe(stderr=True, highlight=False, quiet=quiet)


def locate(target: PathLike | None, notes: Notes | None = None, verify: bool = True) -> Header:
    """rundir.locate (verify=False: the header alone is read), or an NVlabs network file
    (FILE.pkl) imported on the fly (importers.convert.locate): each damaged checkpoint it
    passed over a note (default: a warning at the caller's line)."""
    path("target", target, "a run directory, a checkpoint path, an NVlabs .pkl, 'latest' or "
         "'best'")
    callback("notes", notes)
    passed: list[str] = []
    header = convert.locate(target, passed.append, verify)
    for message in passed:
        if notes is not None:
            notes(message)
        else:
            warnings.warn(message, stacklevel=4)  # at the line calling load() or evaluate()
    return header


def check_noise_mode(noise_mode: object) -> str:
    """A StyleGAN2's noise mode, as --noise-mode takes it (a UsageError: exit 2)."""
    from ganctl.models.generator import NOISE_MODES

    if noise_mode not in NOISE_MODES:
        raise UsageError(f"noise mode {noise_mode!r} is not one of {', '.join(NOISE_MODES)}",
                         "--noise-mode")
    return str(noise_mode)

"""The one exception family the CLI turns into exit code 1.

Every expected failure (bad config, missing checkpoint, absent device, ...) raises a
subclass of GanctlError whose message is one line that says what is wrong and what to do.
"""

import errno
import signal
from collections.abc import Iterable

from ganctl.text import one_line as _shown


class GanctlError(Exception):
    """An expected failure: the CLI prints `error: <message>` and exits 1. Its message is one
    line (control characters, line breaks included, shown escaped) of at most MAX_MESSAGE
    characters, whatever a value quoted in it held (a path, a setting, a stranger's metadata)."""

    exit_code = 1
    result: dict | None = None  # where things stand, for --json (a stopped run's position)

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(one_line(str(message)), *args)


MAX_MESSAGE = 1000  # characters of an error's message: the middle of a longer one is cut
def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """text on one line (text.one_line: control characters as \\n, \\r, \\xNN) of at most
    `limit` characters: a longer text keeps its beginning and end (what is wrong, what to do)."""
    text = _shown(text)
    if len(text) > limit:
        keep = (limit - 40) // 2
        text = f"{text[:keep]} ...({len(text) - 2 * keep} characters)... {text[-keep:]}"
    return text


class ConfigError(GanctlError):
    """A config value, file or combination that cannot be used."""


class UsageError(ConfigError):
    """An argument that cannot be used as given, whatever the files say: the command line's
    usage error (exit 2) naming `option` ("--format", "OUT"), a ConfigError in Python."""

    exit_code = 2

    def __init__(self, message: object, option: str) -> None:
        super().__init__(message)
        self.option = option


class DeviceError(GanctlError):
    """The requested device does not exist on this machine."""


class DataError(GanctlError):
    """A dataset that cannot be found or read."""


class DataMissing(DataError):
    """A named dataset's files are not there (a download may bring them); damaged ones are a
    plain DataError, never a reason to download over them."""


class CheckpointError(GanctlError):
    """A checkpoint or run directory that is missing, unreadable or not ganctl's."""


class RunError(GanctlError):
    """A run directory that cannot be used as asked (exists already, not writable, ...)."""


# what to do about an operating system's error, by its errno (else: free space and permissions)
_OS_HINTS = {errno.ENAMETOOLONG: "use a shorter path", errno.ENOSPC: "free some space",
             errno.EDQUOT: "free some space (a disk quota is full)", errno.EROFS:
             "the file system is read-only: choose a writable place", errno.ENOENT:
             "check the path", errno.ENOTDIR: "a part of the path is a file, not a folder",
             errno.EACCES: "check the permissions", errno.EPERM: "check the permissions",
             errno.ELOOP: "the path's links go round in a loop", errno.EMFILE:
             "too many open files: raise the limit (ulimit -n)", errno.EEXIST:
             "something is in the way there: move it, or choose another path", errno.EISDIR:
             "a folder is in the way there: move it, or choose another path"}


def os_error_message(e: OSError) -> str:
    """An OSError as one line: what, where (a long path cut short) and what to do."""
    name = str(e.filename) if e.filename else ""
    where = f" ({name[:200]}{'...' if len(name) > 200 else ''})" if name else ""
    hint = _OS_HINTS.get(e.errno or 0, "check free space and permissions")
    return f"{e.strerror or e}{where}; {hint}"


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, at most `limit` characters: what a
    one-line error quotes of torch's many-line ones."""
    return next((line.strip() for line in str(e).splitlines() if line.strip()), "")[:limit]


def lookup(registry: dict, name: str, what: str, error: type[GanctlError] = ConfigError):
    """registry[name], or `error` naming the choices: unknown <what> 'x'; choose one of a, b."""
    try:
        return registry[name]
    except KeyError:
        raise error(f"unknown {what} {shorten(name)}{did_you_mean(name, registry)}; choose one "
                    f"of {', '.join(sorted(registry))}") from None


def shorten(value: object, limit: int = 80) -> str:
    """repr(value), cut to about `limit` characters: a message quotes what was given, not all of
    a 5,000-character mistake."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """" (did you mean X?)" for the choice closest to a misspelt name, or '' if none is close."""
    import difflib

    text, options = str(name).lower(), [str(c) for c in choices]
    close = ([c for c in options if text and c.startswith(text)]  # sngan: sngan-cifar10
             or difflib.get_close_matches(text, options, n=1, cutoff=0.6))
    return f" (did you mean {close[0]!r}?)" if close else ""


class FeatureNetError(GanctlError):
    """The metrics' feature network is missing, cannot be fetched, or is not one ganctl knows."""


# A terminal's, a user's or a batch scheduler's ways of saying stop (Slurm's --signal sends
# SIGUSR1/2 ahead of the kill; SIGXCPU is a CPU-time limit): each ends training after a
# checkpoint with Stopped, and outside training unwinds with exit 128 + N.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                signal.SIGXCPU)


class Stopped(GanctlError):
    """Stopped by a signal after writing a checkpoint: exit 128 + the signal's number.
    `result` is where the run stands (a dict, for --json)."""

    def __init__(self, signum: int, message: str, result: dict | None = None) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
        self.result = result


class Diverged(GanctlError):
    """Non-finite statistics kept coming back after the divergence guard's rollbacks."""

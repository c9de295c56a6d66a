"""The `ganctl` command line: parse, call the Python API (ganctl.api), turn errors into exit
codes. core.py holds the app, the error and signal handling and the reporting every command
shares; options.py the shared options and the settings' options (made from config.py's fields);
one module per family of commands: training.py (train, resume), sampling.py (sample, export),
importing.py (import), reports.py (inspect, eval, runs, plot), data.py (data prepare|info|cache).
A new command is a function in one of them (or a module of its own, imported below).

Exit codes: 0 done; 1 a one-line error on stderr (traceback only with --debug); 2 a bad
command line (Typer's usage error); 128 + N stopped by signal N (SIGHUP 129, SIGINT 130,
SIGTERM 143 ...), with a one-line message (and with --json the JSON document) wherever it lands.
The user's output going away (a closed pipe or terminal) changes none of this.
"""

from __future__ import annotations

from ganctl.cli.core import _call, _terminate, app, run

# isort: off
# the commands, in the order `ganctl --help` lists them
from ganctl.cli import training, sampling, importing, reports, data
# isort: on
from ganctl.cli.training import train_values


def _paragraphs_on_one_line(doc: str) -> str:
    """A docstring with each paragraph on one line: rich keeps the source's line breaks inside
    a paragraph (the command list showed "... on any number" / "of processes"), and wraps one
    line at the terminal's width itself."""
    from inspect import cleandoc

    return "\n\n".join(" ".join(part.split()) for part in cleandoc(doc).split("\n\n"))


for _commands in (app, data.data_app, data.cache_app):
    for _info in _commands.registered_commands:
        _info.help = _paragraphs_on_one_line(_info.help or _info.callback.__doc__ or "")

__all__ = ["_call", "_terminate", "app", "importing", "reports", "run", "sampling", "train_values",
           "training"]

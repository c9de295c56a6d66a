"""`python -m ganctl` and the `ganctl` console script.

The stop signals are held back first thing, before the command line's modules (typer, rich,
later torch) are imported: a stop that lands during those first tens of milliseconds is then
delivered once the command can report it (exit 128 + N, with --json its JSON document) instead
of killing the process with no output or printing a KeyboardInterrupt traceback.
"""

import signal

from ganctl.errors import STOP_SIGNALS  # ganctl/__init__ and errors import nothing heavy


def main() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    from ganctl.cli import run

    run()


if __name__ == "__main__":
    main()

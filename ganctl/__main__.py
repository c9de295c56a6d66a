"""`python -m ganctl` and the `ganctl` console script.

The stop signals are held back first thing, before the command line's modules (typer, rich,
later torch) are imported: a stop that lands during start-up is then delivered once the command
can report it (exit 128 + N, with --json its JSON document) instead of killing the process with
no output or printing a KeyboardInterrupt traceback. Only the interpreter's own start-up, before
any of ganctl's code runs (some 20-40 ms), comes before it.
"""

import signal

# ganctl.errors.STOP_SIGNALS, held back before even that module is imported
signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                                          signal.SIGUSR1, signal.SIGUSR2, signal.SIGXCPU))

from ganctl.errors import STOP_SIGNALS  # noqa: E402


def main() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # (the same: imported, main() alone)
    from ganctl.cli import run

    run()


if __name__ == "__main__":
    main()

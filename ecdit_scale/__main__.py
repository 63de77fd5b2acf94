"""`python -m ecdit_scale` and the `ecdit-scale` console script.

Ctrl-C while the command's modules are still importing (typer, rich, numpy: the first ~0.3 s)
ends the process with one line instead of a traceback; once they are loaded, the command's own
handling (cli.common.main) takes over.
"""

import os
import signal


def _interrupted_while_starting(signum, frame):  # noqa: ARG001
    os.write(2, b"interrupted while starting: nothing was done\n")
    os._exit(130)


def main() -> None:
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:  # not when ignored (a background job) or custom
        try:
            signal.signal(signal.SIGINT, _interrupted_while_starting)
        except ValueError:  # not the main thread (an embedding caller): leave signals alone
            pass
    from .cli import app  # noqa: F401  (registers every command)
    from .cli.common import main as cli_main

    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, previous)
    cli_main()


if __name__ == "__main__":
    main()

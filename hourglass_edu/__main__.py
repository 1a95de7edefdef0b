"""`python -m hourglass_edu ...` runs the command line (see the cli package)."""

import sys


def _run() -> int:
    try:
        from hourglass_edu.cli import main

        return main()
    except KeyboardInterrupt:
        # Ctrl-C before the command line could take it (say, while torch imports): nothing has
        # been written yet, so the exit code a shell expects, and no traceback.
        print("interrupted (Ctrl-C); nothing was written", file=sys.stderr)
        return 130


sys.exit(_run())

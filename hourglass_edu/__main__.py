"""`python -m hourglass_edu ...` runs the command line (see cli.py)."""

import sys

from hourglass_edu.cli import main

sys.exit(main())

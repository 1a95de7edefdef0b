"""`python -m hourglass_edu ...` runs the command line (see the cli package)."""

import sys

from hourglass_edu.cli import main

sys.exit(main())

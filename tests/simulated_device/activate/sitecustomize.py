"""Start-up hook: with HOURGLASS_EDU_SIMULATED_DEVICE=1, register the "sim" device in this process.

Python imports `sitecustomize` from PYTHONPATH at start-up, so putting this folder on PYTHONPATH
reaches every process a test starts: notebook kernels, `python -m hourglass_edu ...` commands,
torchrun's workers. Without the variable it does nothing (and imports nothing).
"""

import os

if os.environ.get("HOURGLASS_EDU_SIMULATED_DEVICE") == "1":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, where the package is
    import simulated_device

    simulated_device.install()
    del sys.path[0]

"""The course's settings: where notebooks install the library from on Colab, and their profiles.

Where from. A Colab notebook's first code cell installs the library before anything of it can be
imported, so each cell must spell the repository URL and the ref out literally. This module is the
one place those two are declared (`REPOSITORY_URL`, `COURSE_REF`);
`tests/repository/test_course_cells.py` checks that every notebook's install cell and Colab badge
use exactly them, so a new release changes them here and the test lists the notebooks to update.
The ref pins a tag, so a notebook opened from its badge gets the library it was written for, not
whatever the default branch holds that day.

Profiles. Every notebook's parameters cell sizes its work by one `PROFILE`:

    smoke   CI-sized: seconds per notebook, and the results mean nothing (HOURGLASS_EDU_SMOKE=1)
    cpu     a 2-core laptop CPU: every notebook in at most 10 minutes, with the shipped trained
            models (`hourglass_edu.pretrained`) wherever a trained model is needed
    gpu     one GPU: bigger models and longer runs

`default_profile()` picks one from the environment; a learner overrides it by assigning `PROFILE`
in the parameters cell (or by setting HOURGLASS_EDU_PROFILE before starting Jupyter).

Device. Every notebook computes on `DEVICE = default_device()`: CUDA where there is a GPU, else the
CPU, or whatever HOURGLASS_EDU_DEVICE names (CI sets it to the test tree's simulated accelerator, so
the course runs the code path a GPU runs; a learner may set `DEVICE = "cpu"` in the cell).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["COURSE_REF", "REPOSITORY_URL", "colab_cell_source", "default_device", "default_profile"]

#: The project's repository (pyproject.toml's Homepage and Repository).
REPOSITORY_URL = "https://github.com/hourglass-edu/hourglass_edu"
#: The tag (or commit) the notebooks install and open on Colab: the release they were written for.
COURSE_REF = "v0.4.0"
#: The notebooks' settings profiles, smallest first.
PROFILES = ("smoke", "cpu", "gpu")


def pip_requirement(url: str = REPOSITORY_URL, ref: str = COURSE_REF) -> str:
    """The pip requirement that installs the library from `url` at `ref` (a PEP 508 direct URL)."""
    return f"hourglass_edu @ git+{url}@{ref}"


def colab_install_command() -> str:
    """The line every notebook's Colab cell runs to install the library."""
    return f'%pip install -q "{pip_requirement()}"'


def colab_cell_source() -> str:
    """The first code cell of every notebook: on Colab, install the library and make widgets show.

    The install keeps what Colab ships (pyproject.toml's lower bounds admit Colab's versions,
    ipywidgets 7.7.1 among them; requirements/colab.txt holds them). Colab's own widget manager
    shows ipywidgets 7 widgets; only an ipywidgets 8 that the learner installed needs Colab's
    custom widget manager, so the cell turns that on only when the kernel's ipywidgets is 8 or
    later. `import ipywidgets` names the version this kernel runs: one upgraded on disk after the
    kernel imported the old one is not in use until a restart.
    """
    return (
        "# On Colab: install the course library at the release this notebook was written for\n"
        "# (keeping the versions Colab ships) and make widgets show: Colab shows its own\n"
        "# ipywidgets 7 by itself, an ipywidgets 8 needs its custom widget manager. Elsewhere:\n"
        "# nothing. (hourglass_edu/course.py's colab_cell_source() is this cell, with its\n"
        "# REPOSITORY_URL and COURSE_REF; tests/repository/test_course_cells.py keeps every\n"
        "# notebook in step with it.)\n"
        "import sys\n"
        'if "google.colab" in sys.modules:\n'
        f"    {colab_install_command()}\n"
        "    import ipywidgets\n"
        '    if int(ipywidgets.__version__.split(".")[0]) >= 8:\n'
        "        from google.colab import output\n"
        "        output.enable_custom_widget_manager()"
    )


def colab_badge_url(notebook: str) -> str:
    """Where a notebook's "Open in Colab" badge points: `notebook` (a file name in notebooks/)
    at `COURSE_REF`, so the notebook and the library it installs come from the same release."""
    repository = REPOSITORY_URL.removeprefix("https://github.com/")
    return (f"https://colab.research.google.com/github/{repository}/blob/{COURSE_REF}/"
            f"notebooks/{notebook}")


def default_profile(environ: Mapping[str, str] | None = None,
                    cuda_available: bool | None = None) -> str:
    """The profile a notebook runs with unless the learner sets one.

    HOURGLASS_EDU_PROFILE, when set, names it; otherwise "smoke" when HOURGLASS_EDU_SMOKE is on
    (1, true, yes or on: how CI runs the course), else "gpu" where CUDA is available, else "cpu".
    """
    environ = os.environ if environ is None else environ
    chosen = environ.get("HOURGLASS_EDU_PROFILE", "").strip().lower()
    if chosen:
        if chosen not in PROFILES:
            raise ValueError(f"HOURGLASS_EDU_PROFILE={chosen!r} is not a profile; choose one of "
                             f"{', '.join(PROFILES)}")
        return chosen
    if environment_switch("HOURGLASS_EDU_SMOKE", environ):
        return "smoke"
    if cuda_available is None:
        import torch  # here: the module's other settings are read without torch

        cuda_available = torch.cuda.is_available()
    return "gpu" if cuda_available else "cpu"


# How an on/off environment variable may be spelled (case and surrounding spaces aside).
SWITCH_ON = ("1", "true", "yes", "on")
SWITCH_OFF = ("", "0", "false", "no", "off")


def environment_switch(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the on/off variable `name` is on; unset or empty is off. Any spelling other than
    `SWITCH_ON` / `SWITCH_OFF` is refused (ValueError naming the variable), never read as off."""
    environ = os.environ if environ is None else environ
    text = environ.get(name, "")
    value = text.strip().lower()
    if value in SWITCH_ON:
        return True
    if value in SWITCH_OFF:
        return False
    raise ValueError(f"{name}={text!r} is neither on nor off: set it to 1 (or true, yes, on) to "
                     "switch it on, to 0 (or false, no, off) or unset it to switch it off")


def default_device(environ: Mapping[str, str] | None = None,
                   cuda_available: bool | None = None) -> str:
    """The device a notebook computes on unless the learner sets one.

    HOURGLASS_EDU_DEVICE, when set, names it ("auto", "cpu", "cuda:1", ...: what
    `devices.resolve_device` accepts); otherwise "cuda" where CUDA is available, else "cpu".
    """
    import torch  # here: the module's other settings are read without torch

    environ = os.environ if environ is None else environ
    chosen = environ.get("HOURGLASS_EDU_DEVICE", "").strip()
    if chosen:
        from hourglass_edu.devices import resolve_device

        try:
            return str(resolve_device(chosen))
        except ValueError as error:
            raise ValueError(f"HOURGLASS_EDU_DEVICE={chosen!r}: {error}; or unset it") from None
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    return "cuda" if cuda_available else "cpu"

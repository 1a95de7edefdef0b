"""Where the course's notebooks install the library from on Colab: one repository URL, one ref.

A Colab notebook's first code cell installs the library before anything of it can be imported, so
each cell must spell the repository URL and the ref out literally. This module is the one place
those two are declared (`REPOSITORY_URL`, `COURSE_REF`); `tests/test_course_cells.py` checks that
every notebook's install cell and Colab badge use exactly them, so a new release changes them here
and the test lists the notebooks to update. The ref pins a tag, so a notebook opened from its badge
gets the library it was written for, not whatever the default branch holds that day.
"""

from __future__ import annotations

__all__ = [
    "COURSE_REF",
    "REPOSITORY_URL",
    "colab_badge_url",
    "colab_install_command",
    "pip_requirement",
]

#: The project's repository (pyproject.toml's Homepage and Repository).
REPOSITORY_URL = "https://github.com/hourglass-edu/hourglass_edu"
#: The tag (or commit) the notebooks install and open on Colab: the release they were written for.
COURSE_REF = "v0.1.0"


def pip_requirement(url: str = REPOSITORY_URL, ref: str = COURSE_REF) -> str:
    """The pip requirement that installs the library from `url` at `ref` (a PEP 508 direct URL)."""
    return f"hourglass_edu @ git+{url}@{ref}"


def colab_install_command() -> str:
    """The line every notebook's Colab cell runs to install the library."""
    return f'%pip install -q "{pip_requirement()}"'


def colab_badge_url(notebook: str) -> str:
    """Where a notebook's "Open in Colab" badge points: `notebook` (a file name in notebooks/)
    at `COURSE_REF`, so the notebook and the library it installs come from the same release."""
    repository = REPOSITORY_URL.removeprefix("https://github.com/")
    return (f"https://colab.research.google.com/github/{repository}/blob/{COURSE_REF}/"
            f"notebooks/{notebook}")


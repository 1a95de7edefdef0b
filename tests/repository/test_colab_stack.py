"""The Colab-stack tier's own checks: this virtualenv holds Colab's versions, and installing the
course into it, as a notebook's first cell does on Colab, changes none of them.

They run only in the tier (.ci/colab-stack sets HOURGLASS_EDU_COLAB_STACK=1 in a virtualenv it
built from requirements/colab.txt); elsewhere they skip, saying so. The tier also runs the widget
tests, notebooks 07, 08, 09 and 11 and the classic-Notebook browser tests in the same virtualenv.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from colab_pins import colab as read_colab_pins
from colab_pins import refresh

REPO_ROOT = Path(__file__).resolve().parents[2]
IN_THE_TIER = os.environ.get("HOURGLASS_EDU_COLAB_STACK") == "1"
#: Colab's torch is a CUDA build (2.11.0+cu128 in requirements/colab.txt); the tier runs this
#: machine's CPU torch instead, the one .ci/run installs.
TIER_TORCH = "2.13.0"
#: Packages the tier does not take at Colab's version, and why (.ci/colab-stack leaves them out
#: of its constraints).
NOT_COLABS = {
    "torch": f"Colab's is a CUDA build; the tier runs the CPU torch {TIER_TORCH}",
    "setuptools": "torch 2.13.0 requires setuptools>=77.0.3; Colab's 75.2.0 serves its torch",
    "hourglass-edu": "the course itself, from this checkout",
}
PIP_TIMEOUT_S = 600

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not IN_THE_TIER, reason="runs in the Colab-stack tier only "
                       "(.ci/colab-stack, which sets HOURGLASS_EDU_COLAB_STACK=1)"),
]


def installed() -> dict[str, str]:
    """{normalized name: version} of every distribution in this virtualenv."""
    return {refresh.normalize(d.metadata["Name"]): d.version
            for d in importlib.metadata.distributions()}  # fmt: skip


def test_the_tier_runs_colabs_versions_of_everything_colab_has():
    colab = read_colab_pins()
    pins = {refresh.normalize(name): version for name, version in colab.pins.items()}
    here = installed()
    assert here.get("ipywidgets") == pins["ipywidgets"], "the tier must run Colab's ipywidgets"
    assert here["torch"].split("+")[0] == TIER_TORCH
    different = {name: (version, pins[name]) for name, version in here.items()
                 if name in pins and name not in NOT_COLABS and version != pins[name]}
    assert not different, f"installed (here, Colab) versions differ: {different}"
    for needed in ("ipywidgets", "widgetsnbextension", "notebook", "ipykernel", "traitlets",
                   "nbclient", "numpy", "matplotlib"):
        assert needed in here, f"the tier did not install {needed}"


def test_installing_the_course_on_colabs_pins_upgrades_nothing(tmp_path):
    """pip's own resolver, asked as Colab's %pip is (no constraints, the default upgrade
    strategy), must find every requirement already met: it installs the course and nothing else.
    The checkout stands in for `git+https://...@COURSE_REF`: the same pyproject.toml."""
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report",
         str(report_path), str(REPO_ROOT)],
        capture_output=True, text=True, timeout=PIP_TIMEOUT_S, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, (
        f"pip's dry run failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    here = installed()
    would_install = {refresh.normalize(item["metadata"]["name"]): item["metadata"]["version"]
                     for item in report["install"]}  # fmt: skip
    assert "hourglass-edu" in would_install, "the dry run did not install the course itself"
    del would_install["hourglass-edu"]
    replaced = {name: f"{here[name]} -> {version}" for name, version in would_install.items()
                if name in here}  # fmt: skip
    added = {name: version for name, version in would_install.items() if name not in here}
    assert not replaced, f"installing the course would replace what Colab ships: {replaced}"
    assert not added, f"installing the course would add packages Colab's pins lack: {added}"


def test_the_notebooks_kernel_is_this_virtualenvs_python():
    """Notebooks (nbclient, the classic Notebook) start the `python3` kernel: it must be this
    virtualenv's Python, not one a user-level kernelspec points to."""
    from jupyter_client.kernelspec import KernelSpecManager

    program = KernelSpecManager().get_kernel_spec("python3").argv[0]
    # jupyter_client runs its own Python for a kernelspec that says just "python" or "python3"
    major, minor = sys.version_info[:2]
    assert program in {"python", f"python{major}", f"python{major}.{minor}"} or (
        Path(program).resolve() == Path(sys.executable).resolve()), (
        f"the python3 kernel runs {program}, not {sys.executable}")

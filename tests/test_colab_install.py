"""The Colab path, simulated: install the package the way a notebook's Colab cell does, then use it.

A fresh virtualenv (no system site packages: it cannot see this checkout or the test
environment) gets a recent pip, the CPU torch this environment runs (from the local wheel cache;
any other torch request would download gigabytes), then
`pip install "hourglass_edu @ git+file://CLONE@COMMIT"`: a clone of this repository at HEAD, the
way Colab installs `git+https://...@COURSE_REF`. Only what is committed is installed, so the
test checks that the shipped models really travel as package data: `list_pretrained()` names
exactly the model folders committed at HEAD (none yet is fine) and `load_pretrained` loads each.
Then notebook 07's first cells run in an IPython shell in that venv, as on Colab: a stand-in
`google.colab` module is imported first, the `%pip` magic is recorded instead of reaching
GitHub, and the Colab, parameters and imports cells run (and the model cell, when the notebook's
shipped model is committed).

Needs git and network access to PyPI for the dependencies; takes a minute or two: marked `slow`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hourglass_edu import course

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/07_generation.ipynb"
TORCH_REQUIREMENT = f"torch=={torch.__version__.split('+')[0]}"
STEP_TIMEOUT_S = 600

COLAB_STUB = '''"""A stand-in for Colab's google.colab: records what a notebook asks of it."""


class _Output:
    custom_widget_manager = False

    def enable_custom_widget_manager(self):
        _Output.custom_widget_manager = True


output = _Output()
'''

# Runs inside the new virtualenv; prints one JSON line for the test to check.
DRIVER = r'''
import json, sys
sys.path.insert(0, sys.argv[1])           # the google.colab stand-in
notebook_path = sys.argv[2]
import google.colab                       # on Colab it is imported before any cell runs
from IPython.core.interactiveshell import InteractiveShell

import hourglass_edu
from hourglass_edu import list_pretrained, load_pretrained

report = {"package": hourglass_edu.__file__, "models": list_pretrained(), "parameters": {}}
for name in report["models"]:
    model, tokenizer = load_pretrained(name)
    report["parameters"][name] = model.num_parameters()

class KernelLikeShell(InteractiveShell):
    def enable_gui(self, gui=None):  # like a notebook kernel: no GUI loop for inline figures
        pass


shell = KernelLikeShell.instance()
pip_lines = []
shell.register_magic_function(pip_lines.append, magic_kind="line", magic_name="pip")
cells = json.load(open(notebook_path, encoding="utf-8"))["cells"]
code = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        for c in cells if c["cell_type"] == "code"]
ran = []
for index, source in enumerate(code[:3]):  # Colab install, parameters, imports
    shell.run_cell(source, store_history=False).raise_error()
    ran.append(index)
if shell.user_ns.get("PRETRAINED") in report["models"]:
    shell.run_cell(code[3], store_history=False).raise_error()   # the model cell
    ran.append(3)
    report["model_cell_loaded"] = type(shell.user_ns["model"]).__name__
import ipywidgets
report.update(pip_lines=pip_lines, ran=ran, profile=shell.user_ns["PROFILE"],
              widget_manager=google.colab.output.custom_widget_manager,
              ipywidgets=ipywidgets.__version__)
print("REPORT " + json.dumps(report))
'''


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=STEP_TIMEOUT_S)
    assert done.returncode == 0, (
        f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
        f"{done.stderr[-3000:]}")
    return done.stdout


def committed_models(commit: str) -> list[str]:
    """Names of the model folders (NAME/model.safetensors) committed in hourglass_edu/pretrained."""
    listing = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", commit, "hourglass_edu/pretrained"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
    return sorted(Path(path).parent.name for path in listing
                  if path.endswith("/model.safetensors") and path.count("/") == 3)


def clean_environment(venv: Path) -> dict[str, str]:
    """This process's environment without anything that would let the venv see the checkout."""
    env = {key: value for key, value in os.environ.items()
           if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "HOURGLASS_EDU_SMOKE",
                          "HOURGLASS_EDU_PROFILE", "PIP_REQUIRE_VIRTUALENV"}}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env["MPLBACKEND"] = "Agg"
    return env


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to clone the repository")
def test_colab_style_install_ships_the_models_and_runs_notebook_07(tmp_path):
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(clone)], check=True,
                   timeout=STEP_TIMEOUT_S)
    subprocess.run(["git", "checkout", "--quiet", commit], cwd=clone, check=True)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=STEP_TIMEOUT_S)
    python = str(venv / "bin" / "python")
    env = clean_environment(venv)
    work = tmp_path / "work"  # neither the checkout nor the clone: nothing importable by accident
    work.mkdir()
    pip = [python, "-m", "pip", "install", "--quiet"]
    run([*pip, "--upgrade", "pip"], work, env)
    run([*pip, TORCH_REQUIREMENT], work, env)
    run([*pip, f"hourglass_edu @ git+file://{clone}@{commit}"], work, env)

    stubs = tmp_path / "stubs"
    (stubs / "google" / "colab").mkdir(parents=True)
    (stubs / "google" / "__init__.py").write_text("")
    (stubs / "google" / "colab" / "__init__.py").write_text(COLAB_STUB)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    output = run([python, str(driver), str(stubs), str(clone / NOTEBOOK)], work, env)
    report = json.loads(next(line for line in output.splitlines()
                             if line.startswith("REPORT "))[len("REPORT "):])

    assert Path(report["package"]).resolve().is_relative_to(venv.resolve()), (
        f"hourglass_edu was imported from {report['package']}, not from the virtualenv")
    expected = committed_models(commit)
    assert report["models"] == expected, (
        "list_pretrained() in the installed package must name exactly the model folders "
        f"committed at HEAD: installed {report['models']}, committed {expected}")
    if expected:
        assert len(report["parameters"]) >= 1
        assert all(count > 0 for count in report["parameters"].values())
    assert report["pip_lines"] == [course.colab_install_command().removeprefix("%pip ")], (
        "the Colab cell must run the course's install command")
    # This venv has no Colab pins, so pip picks the newest ipywidgets; on Colab's own 7.7.1 the
    # cell leaves the custom manager off (tests/repository/test_course_cells.py, .ci/colab-stack).
    needs_custom_manager = int(report["ipywidgets"].split(".")[0]) >= 8
    assert report["widget_manager"] == needs_custom_manager, (
        f"with ipywidgets {report['ipywidgets']} the Colab cell must "
        f"{'enable' if needs_custom_manager else 'leave off'} Colab's custom widget manager")
    assert report["profile"] in course.PROFILES
    assert report["ran"][:3] == [0, 1, 2]
    if "lovecraft" in expected:
        assert report.get("model_cell_loaded") == "HourglassLM"

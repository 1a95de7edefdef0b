"""The course notebooks: committed clean, set up for Colab, executable top to bottom.

Every notebook in notebooks/ is executed with HOURGLASS_EDU_SMOKE=1 (its parameters cell shrinks
to CI size) in a fresh kernel, and fails on any error. The kernel computes on the simulated
accelerator (tests/simulated_device: HOURGLASS_EDU_DEVICE=sim, a device that is not the CPU),
so a model or tensor left on the CPU, or a device tensor handed to NumPy / Matplotlib without
`.cpu()`, fails here as it would on a learner's GPU. The structural checks keep the course
consistent: no committed outputs, an "Open in Colab" badge, a Colab install cell that uses the
repository URL from pyproject.toml (kept in one place), a `parameters` cell, and exercises at
the end.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import simulated_device

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
PER_NOTEBOOK_TIMEOUT_S = 120

# Exercise checks that compute on DEVICE, run after the notebook with the exercise's own solution:
# no cell a learner runs calls them, so without this a check written for the CPU only (issue 22's
# finding 3) would first fail on a learner's GPU.
SOLVED_EXERCISE_CHECKS = {
    "10_related_work.ipynb": [(4, "check_exercise_4(predicted_entries)")],
    "12_appendix_the_paper_and_evaluation.ipynb": [(1, "check_exercise_1(your_ratio)")],
}


def _fill_solutions():
    """tools/fill_solutions.py (not a package): the capstone's solved form, and every solution."""
    spec = importlib.util.spec_from_file_location("fill_solutions",
                                                  REPO_ROOT / "tools" / "fill_solutions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def as_run_on_the_device(notebook, name: str):
    """The notebook as the device run executes it: the capstone with its solutions filled in (the
    committed stubs run no model code), every notebook with its device-touching checks appended."""
    nbformat = pytest.importorskip("nbformat")
    tools = _fill_solutions()
    if name.startswith("11_"):
        notebook = tools.solved(notebook)
    answers = cell_source(next(c for c in notebook.cells if c.get("id") == "solutions"))
    written = {int(number): body for number, _, body in tools.SOLUTION.findall(answers)}
    for number, call in SOLVED_EXERCISE_CHECKS.get(name, []):
        code = "\n".join(tools.PYTHON_BLOCK.findall(written[number]))
        notebook.cells.append(nbformat.v4.new_code_cell(f"{code}\n{call}"))
    return notebook


def _simulated_kernel(monkeypatch):
    monkeypatch.setenv("HOURGLASS_EDU_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # The kernel imports the package from this checkout even when it is not installed, and
    # computes on the simulated device (its start-up hook registers "sim" before any cell runs).
    for name, value in simulated_device.environment().items():
        if os.environ.get(name) != value:
            monkeypatch.setenv(name, value)


def repository_url() -> str:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return pyproject["project"]["urls"]["Repository"]


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def cell_source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def test_course_has_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    for index, cell in enumerate(load(path)["cells"]):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name} cell {index} has outputs: clear them"
            assert cell.get("execution_count") is None, (
                f"{path.name} cell {index} has an execution count: clear outputs before committing"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_structure(path):
    cells = load(path)["cells"]
    url = repository_url()
    badge = f"https://colab.research.google.com/github/{url.removeprefix('https://github.com/')}"
    assert cells[0]["cell_type"] == "markdown" and badge in cell_source(cells[0]), (
        f"{path.name}: the first cell must be markdown with an Open in Colab badge linking {badge}"
    )
    first_code = next(c for c in cells if c["cell_type"] == "code")
    assert "google.colab" in cell_source(first_code) and url in cell_source(first_code), (
        f"{path.name}: the first code cell must install the package on Colab from {url}"
    )
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell must be tagged `parameters`"
    assert "HOURGLASS_EDU_SMOKE" in cell_source(tagged[0]), (
        f"{path.name}: the parameters cell must shrink its values when HOURGLASS_EDU_SMOKE=1"
    )
    markdown = [cell_source(c).lower() for c in cells if c["cell_type"] == "markdown"]
    assert any("exercise" in text for text in markdown[-3:]), (
        f"{path.name}: the notebook must end with exercises"
    )


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    _simulated_kernel(monkeypatch)
    notebook = as_run_on_the_device(nbformat.read(path, as_version=4), path.name)
    client = nbclient.NotebookClient(
        notebook,
        timeout=PER_NOTEBOOK_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        raise AssertionError(f"{path.name}: {failed_cell(notebook)} failed on the simulated "
                             f"device:\n{error}") from None


def failed_cell(notebook) -> str:
    """Which cell raised (its index and id), read from the executed notebook's error output."""
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"cell {index} (id {cell.get('id')!r}, {output.get('ename')})"
    return "a cell"


# Notebook 07's cached-step cell takes one block of the model to the CPU; it must work on a copy,
# or a failure halfway through leaves the model split across devices for every later cell
# (issue 22's finding 5). Here its comparison is made to fail once, and the rest must still run.
INTERRUPTED = ("07_generation.ipynb", "cell-17", "torch.testing.assert_close")
SABOTAGE = """import torch.testing as _testing
_real_assert_close = _testing.assert_close
def _interrupted(*args, **kwargs):
    raise RuntimeError("stopped halfway on purpose")
_testing.assert_close = _interrupted"""
REPAIR = "_testing.assert_close = _real_assert_close"


@pytest.mark.notebook
@pytest.mark.slow
def test_a_cell_stopped_halfway_leaves_the_model_on_the_device(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    _simulated_kernel(monkeypatch)
    name, cell_id, call = INTERRUPTED
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    target = [cell for cell in notebook.cells if cell.get("id") == cell_id]
    assert target and call in cell_source(target[0]), (
        f"{name}: cell {cell_id} (the cached step by hand, which calls {call}) moved: update "
        "INTERRUPTED")
    client = nbclient.NotebookClient(notebook, timeout=PER_NOTEBOOK_TIMEOUT_S,
                                     kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):
            if cell is not target[0]:
                try:
                    client.execute_cell(cell, index)
                except nbclient.exceptions.CellExecutionError as error:
                    raise AssertionError(
                        f"{name}: cell {index} (id {cell.get('id')!r}) failed after cell "
                        f"{cell_id} stopped halfway:\n{error}") from None
                continue
            client.execute_cell(nbformat.v4.new_code_cell(SABOTAGE), index)
            with pytest.raises(nbclient.exceptions.CellExecutionError, match="on purpose"):
                client.execute_cell(cell, index)
            client.execute_cell(nbformat.v4.new_code_cell(REPAIR), index)

"""The browser harness itself, on tiny notebooks: it sees widgets work, and it sees failures.

A harness that cannot fail proves nothing, so each check the course tests rely on has a negative
control here: a notebook that raises, a traceback on stderr, a JavaScript console error.
"""

from __future__ import annotations

import nbformat
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

BUTTON_CELL = """\
import ipywidgets as widgets
from IPython.display import display

output = widgets.Output()
output.add_class("t-output")
button = widgets.Button(description="Say hello")
button.add_class("t-button")

def on_click(_button):
    with output:
        print("hello from the kernel")

button.on_click(on_click)
display(button, output)
"""


def write_notebook(folder, name: str, *sources: str) -> str:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(notebook, folder / name)
    return name


def test_button_click_writes_to_output_widget(lab_root, open_notebook):
    name = write_notebook(lab_root, "harness_button.ipynb", "x = 1 + 1", BUTTON_CELL)
    notebook = open_notebook(name)
    state = notebook.run_all(timeout_s=120)
    assert [c["executionCount"] for c in state["cells"]] == [1, 2]
    assert notebook.problems(state) == []

    output = notebook.page.locator(".t-output")
    assert output.inner_text().strip() == ""
    notebook.page.locator("button.t-button").click()
    output.get_by_text("hello from the kernel").wait_for(timeout=30_000)
    assert notebook.problems() == []


def test_error_output_is_reported_and_stops_the_run(lab_root, open_notebook):
    name = write_notebook(
        lab_root, "harness_error.ipynb",
        "x = 1", "raise ValueError('deliberate failure')", "never_runs = True",
    )  # fmt: skip
    notebook = open_notebook(name)
    state = notebook.run_all(timeout_s=120)
    assert state["cells"][2]["executionCount"] is None
    assert notebook.problems(state) == ["cell 1: ValueError: deliberate failure"]


def test_traceback_on_stderr_is_reported(lab_root, open_notebook):
    name = write_notebook(
        lab_root, "harness_stderr.ipynb",
        "import sys\nprint('a harmless note', file=sys.stderr)",
        "import sys, traceback\ntry:\n    1 / 0\nexcept ZeroDivisionError:\n"
        "    traceback.print_exc()",
    )  # fmt: skip
    notebook = open_notebook(name)
    problems = notebook.problems(notebook.run_all(timeout_s=120))
    assert len(problems) == 1
    assert problems[0].startswith("cell 1: traceback or error on stderr")
    assert "ZeroDivisionError" in problems[0]


def test_javascript_console_error_is_reported(lab_root, open_notebook):
    name = write_notebook(
        lab_root, "harness_console.ipynb",
        "from IPython.display import Javascript, display\n"
        "display(Javascript(\"console.error('deliberate console error')\"))",
    )  # fmt: skip
    notebook = open_notebook(name)
    problems = notebook.problems(notebook.run_all(timeout_s=120))
    assert any("deliberate console error" in problem for problem in problems), problems
    assert all(problem.startswith("console: ") for problem in problems), problems

"""Committed notebooks stay reviewable: no outputs, no execution counts, stable cell ids.

`tools/strip_notebooks.py` cleans a notebook and, with `--check`, reports what is not clean; the
first test runs that check on every course notebook, the others prove the tool catches and fixes
each kind of dirt (so the first test could fail) without ever renaming an id that is fine.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "strip_notebooks", REPO_ROOT / "tools" / "strip_notebooks.py")
strip_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(strip_notebooks)

NOTEBOOKS = strip_notebooks.course_notebooks()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_clean(path):
    found = strip_notebooks.problems(path)
    assert found == [], (f"{path.name} is not clean: {found}; run "
                         "`python tools/strip_notebooks.py` and commit the result")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cell_ids_are_unique_and_follow_one_pattern(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    version = (notebook["nbformat"], notebook["nbformat_minor"])
    assert version >= (4, 5), f"{path.name}: nbformat {version}; cell ids need 4.5"
    ids = [cell.get("id") for cell in notebook["cells"]]
    assert len(set(ids)) == len(ids), f"{path.name}: repeated cell ids"
    numbered = [strip_notebooks.STABLE_ID.match(cell_id or "") for cell_id in ids]
    named = [strip_notebooks.NAMED_ID.match(cell_id or "") for cell_id in ids]
    assert all(n or m for n, m in zip(numbered, named, strict=True)), (
        f"{path.name}: cell ids must be one word + number (e.g. cell-07) or a name, found {ids}")
    assert len({match.group(1) for match in numbered if match}) <= 1, (
        f"{path.name}: numbered cell ids must share one word, found {ids}")


def dirty_notebook() -> dict:
    """A notebook as Jupyter saves it after a run, with one cell added in the editor."""
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python", "version": "3.11.9", "mimetype": "text/x-python"},
            "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}}},
        },
        "cells": [
            {"cell_type": "markdown", "id": "cell-00", "metadata": {}, "source": "# title"},
            {"cell_type": "code", "id": "cell-01", "execution_count": 3,
             "metadata": {"tags": ["parameters"], "execution": {"iopub.status.busy": "x"}},
             "outputs": [{"output_type": "stream", "name": "stdout", "text": "hi\n"}],
             "source": "print('hi')"},
            {"cell_type": "code", "id": "9f1c2ab4", "execution_count": 4,  # a random id
             "metadata": {"scrolled": True}, "outputs": [], "source": "x = 1"},
            {"cell_type": "code", "id": "cell-01", "execution_count": None,  # a pasted copy
             "metadata": {}, "outputs": [], "source": "print('hi')"},
            {"cell_type": "markdown", "id": "cell-03a", "metadata": {}, "source": "inserted"},
        ],
    }


def test_clean_removes_what_a_run_leaves_and_keeps_tags():
    cleaned = strip_notebooks.clean(dirty_notebook())
    code = [cell for cell in cleaned["cells"] if cell["cell_type"] == "code"]
    assert all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code)
    assert code[0]["metadata"] == {"tags": ["parameters"]}
    assert code[1]["metadata"] == {}
    assert cleaned["metadata"] == {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }


def test_clean_keeps_good_ids_and_numbers_the_others_after_the_last():
    cleaned = strip_notebooks.clean(dirty_notebook())
    # cell-00, cell-01 and the inserted cell-03a stay; the random id and the repeated cell-01
    # get the next free numbers of the notebook's own pattern.
    assert [cell["id"] for cell in cleaned["cells"]] == [
        "cell-00", "cell-01", "cell-04", "cell-05", "cell-03a"]


def test_clean_does_not_accept_another_notebooks_word_as_stable():
    notebook = dirty_notebook()
    notebook["cells"][2]["id"] = "abc12345"  # random hex that looks like a word and a number
    assert strip_notebooks.clean(notebook)["cells"][2]["id"] == "cell-04"


def test_clean_keeps_descriptive_names_but_not_uuids():
    notebook = dirty_notebook()
    notebook["cells"][2]["id"] = "rotary-picture"
    notebook["cells"][4]["id"] = "3f2a9c1e-77b0-4c1e-9a1d-0b5e2f6c8d90"
    ids = [cell["id"] for cell in strip_notebooks.clean(notebook)["cells"]]
    assert ids == ["cell-00", "cell-01", "rotary-picture", "cell-02", "cell-03"]


def test_clean_is_idempotent():
    once = strip_notebooks.clean(dirty_notebook())
    assert strip_notebooks.clean(once) == once


def test_clean_gives_ids_to_an_old_notebook():
    notebook = dirty_notebook()
    notebook["nbformat_minor"] = 4
    for cell in notebook["cells"]:
        del cell["id"]
    cleaned = strip_notebooks.clean(notebook)
    assert cleaned["nbformat_minor"] == 5
    assert [cell["id"] for cell in cleaned["cells"]] == [f"cell-{i:02d}" for i in range(5)]


def test_check_reports_and_changes_nothing_then_strip_fixes(tmp_path, capsys):
    path = tmp_path / "01_dirty.ipynb"
    path.write_text(json.dumps(dirty_notebook()), encoding="utf-8")
    before = path.read_text(encoding="utf-8")

    assert strip_notebooks.main(["--check", str(path)]) == 1
    report = capsys.readouterr().out
    assert "cell 1 has outputs" in report and "'9f1c2ab4'" in report
    assert path.read_text(encoding="utf-8") == before, "--check must not write"

    assert strip_notebooks.main([str(path)]) == 0
    assert strip_notebooks.problems(path) == []
    assert strip_notebooks.main(["--check", str(path)]) == 0


def test_check_reports_a_clean_notebook_in_another_layout(tmp_path):
    path = tmp_path / "01_layout.ipynb"
    path.write_text(json.dumps(strip_notebooks.clean(dirty_notebook()), indent=2), encoding="utf-8")
    assert strip_notebooks.problems(path) == [
        "not in nbformat's layout (one-space indent, sorted keys, final newline)"]

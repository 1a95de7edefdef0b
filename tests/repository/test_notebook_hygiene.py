"""Committed notebooks stay reviewable and alike: clean, one cell-id scheme, one exercise layout.

`tools/strip_notebooks.py` cleans a notebook and, with `--check`, reports what is not clean; the
first test runs that check on every course notebook, the others prove the tool catches and fixes
each kind of dirt (so the first test could fail) without ever renaming an id that is fine. The
layout tests keep every notebook's shape the same: sections numbered from 1, and exercises, then
one cell of check helpers, then the `solutions` cell with one collapsed solution per exercise.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "strip_notebooks", REPO_ROOT / "tools" / "strip_notebooks.py")
strip_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(strip_notebooks)

#: Notebooks whose move to the one cell-id scheme and exercise layout is made on another branch
#: (course-b: 06-10, capstone: 11): their layout tests may fail here until those branches are
#: merged. `test_only_unmigrated_notebooks_wait` fails as soon as a listed notebook passes
#: them all, so this set empties itself out at the merge instead of hiding a regression.
MIGRATED_ON_ANOTHER_BRANCH: set[str] = set()


def _course_notebooks():
    return [pytest.param(path, id=path.name, marks=pytest.mark.xfail(
                reason="moved to the one scheme on another branch, not merged yet"))
            if path.name in MIGRATED_ON_ANOTHER_BRANCH else pytest.param(path, id=path.name)
            for path in strip_notebooks.course_notebooks()]


NOTEBOOKS = _course_notebooks()


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def source(cell: dict) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else text


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_committed_notebook_is_clean(path):
    found = strip_notebooks.problems(path)
    assert found == [], (f"{path.name} is not clean: {found}; run "
                         "`python tools/strip_notebooks.py` and commit the result")


def test_training_notebook_stays_one_sitting():
    """06 teaches training and the fair comparison; the paper, trax, evaluation protocols and long
    context live in appendix 12. A reference section moved back into 06 fails here (issue 30)."""
    path = REPO_ROOT / "notebooks" / "06_training.ipynb"
    length = sum(len(source(cell)) for cell in cells(path))
    assert length < 30_000, (
        f"06_training.ipynb holds {length:,} characters of source (limit 30,000): move reference "
        "material to notebooks/12_appendix_the_paper_and_evaluation.ipynb or docs/")


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_cell_ids_are_unique_and_follow_the_course_scheme(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    version = (notebook["nbformat"], notebook["nbformat_minor"])
    assert version >= (4, 5), f"{path.name}: nbformat {version}; cell ids need 4.5"
    ids = [cell.get("id") for cell in notebook["cells"]]
    assert len(set(ids)) == len(ids), f"{path.name}: repeated cell ids"
    odd = [cell_id for cell_id in ids if not strip_notebooks.is_course_id(cell_id)]
    assert odd == [], (f"{path.name}: cell ids must be cell-NN (cell-07, cell-07a for an inserted "
                       f"cell) or `solutions`; found {odd}")
    solutions = [cell for cell in notebook["cells"] if cell.get("id") == "solutions"]
    assert len(solutions) == 1 and source(solutions[0]).startswith("## Solutions"), (
        f"{path.name}: the id `solutions` belongs to the one '## Solutions' markdown cell")


EXERCISE_TITLE = re.compile(r"^(\d+)\. \*\*(.+?)\*\*", re.MULTILINE)
SOLUTION_TITLE = re.compile(r"^\*\*(\d+)\. (.+?)\*\*\s*\n<details><summary>Solution</summary>",
                            re.MULTILINE)


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_exercises_then_check_helpers_then_collapsed_solutions(path):
    notebook_cells = cells(path)
    where = next(i for i, cell in enumerate(notebook_cells) if cell.get("id") == "solutions")
    exercises, helpers = notebook_cells[where - 2], notebook_cells[where - 1]
    heading = "\n## Exercises\n" in f"\n{source(exercises)}"
    assert exercises["cell_type"] == "markdown" and heading, (
        f"{path.name}: the cell two before `solutions` must hold the '## Exercises' heading")
    assert helpers["cell_type"] == "code" and source(helpers).startswith(
        "# Exercise check helpers"), (
        f"{path.name}: one code cell starting '# Exercise check helpers' sits between the "
        "exercises and the solutions")
    asked = [(int(n), title) for n, title in EXERCISE_TITLE.findall(
        source(exercises).split("## Exercises", 1)[1])]
    answered = [(int(n), title)
                for n, title in SOLUTION_TITLE.findall(source(notebook_cells[where]))]
    assert asked and [n for n, _ in asked] == list(range(1, len(asked) + 1)), (
        f"{path.name}: exercises are numbered 1, 2, ... with bold titles ('1. **Title.**')")
    # An assignment (the capstone) answers its stubbed pieces first, then each exercise as
    # '**M. Exercise N, title.**'; every other notebook answers exactly its exercises.
    pieces = sum("stub" in cell.get("metadata", {}).get("tags", []) for cell in notebook_cells)
    if pieces:
        assert [n for n, _ in answered] == list(range(1, len(answered) + 1)), (
            f"{path.name}: solutions are numbered 1, 2, ...; found {answered}")
        answered = [(int(n), title[0].upper() + title[1:]) for n, title in (
            re.match(r"Exercise (\d+), (.+)", title).groups() for _, title in answered[pieces:])]
    assert answered == asked, (
        f"{path.name}: every exercise needs '**N. Title.**' then a collapsed "
        f"'<details><summary>Solution</summary>' in the solutions cell; exercises {asked}, "
        f"solutions {answered}")
    assert source(notebook_cells[where]).count("</details>") == len(asked) + pieces


NUMBERED_HEADING = re.compile(r"^## \d.*$", re.MULTILINE)
SECTION = re.compile(r"^## (\d+)\. \S")


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_sections_are_numbered_from_one(path):
    headings = [heading for cell in cells(path) if cell["cell_type"] == "markdown"
                for heading in NUMBERED_HEADING.findall(source(cell))]
    odd = [heading for heading in headings if not SECTION.match(heading)]
    assert odd == [], f"{path.name}: a numbered section is written '## 3. Title', found {odd}"
    numbers = [int(SECTION.match(heading).group(1)) for heading in headings]
    assert numbers and numbers == list(range(1, len(numbers) + 1)), (
        f"{path.name}: sections must be '## 1. ...', '## 2. ...' in order, found {numbers}")


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


def test_clean_keeps_good_ids_and_names_the_others_by_where_they_sit():
    cleaned = strip_notebooks.clean(dirty_notebook())
    # cell-00, cell-01 and the inserted cell-03a stay; the random id and the repeated cell-01 sit
    # between cell-01 and cell-03a, so they become cells inserted after cell-01.
    assert [cell["id"] for cell in cleaned["cells"]] == [
        "cell-00", "cell-01", "cell-01a", "cell-01b", "cell-03a"]


def test_clean_numbers_cells_added_at_the_end():
    notebook = dirty_notebook()
    notebook["cells"].append({"cell_type": "code", "id": "5d0c9e3b", "execution_count": None,
                              "metadata": {}, "outputs": [], "source": "y = 2"})
    assert strip_notebooks.clean(notebook)["cells"][-1]["id"] == "cell-04"


def test_clean_gives_a_new_first_cell_the_first_free_number():
    notebook = dirty_notebook()
    notebook["cells"][0]["id"] = "0b3e7c21"
    assert strip_notebooks.clean(notebook)["cells"][0]["id"] == "cell-00"
    notebook["cells"][1]["id"] = "cell-00"
    assert strip_notebooks.clean(notebook)["cells"][0]["id"] == "cell-02"


def test_clean_renames_the_old_schemes_keeping_their_numbers():
    notebook = dirty_notebook()
    for cell, old in zip(notebook["cells"], ["c00", "related-01", "capstone-02", "c03", "c03a"],
                         strict=True):
        cell["id"] = old
    ids = [cell["id"] for cell in strip_notebooks.clean(notebook)["cells"]]
    assert ids == ["cell-00", "cell-01", "cell-02", "cell-03", "cell-03a"]


def test_clean_does_not_take_a_random_id_for_an_old_one():
    notebook = dirty_notebook()
    notebook["cells"][2]["id"] = "c1234567"  # random hex that looks like c + a number
    notebook["cells"][3]["id"] = "abc12345"  # random hex that looks like a word and a number
    ids = [cell["id"] for cell in strip_notebooks.clean(notebook)["cells"]]
    assert ids == ["cell-00", "cell-01", "cell-01a", "cell-01b", "cell-03a"]


def test_clean_renames_descriptive_names_and_uuids_but_keeps_solutions():
    notebook = dirty_notebook()
    notebook["cells"][2]["id"] = "rotary-picture"
    notebook["cells"][3]["id"] = "solutions"
    notebook["cells"][4]["id"] = "3f2a9c1e-77b0-4c1e-9a1d-0b5e2f6c8d90"
    ids = [cell["id"] for cell in strip_notebooks.clean(notebook)["cells"]]
    # No numbered cell follows them, so they are numbered on from cell-01, around `solutions`.
    assert ids == ["cell-00", "cell-01", "cell-02", "solutions", "cell-03"]


def test_clean_gives_a_repeated_solutions_id_a_number():
    notebook = dirty_notebook()
    notebook["cells"][3]["id"] = notebook["cells"][4]["id"] = "solutions"
    ids = [cell["id"] for cell in strip_notebooks.clean(notebook)["cells"]]
    assert ids == ["cell-00", "cell-01", "cell-02", "solutions", "cell-03"]


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
    assert "cell 1 has outputs" in report and "'9f1c2ab4'" in report and "'cell-01a'" in report
    assert path.read_text(encoding="utf-8") == before, "--check must not write"

    assert strip_notebooks.main([str(path)]) == 0
    assert strip_notebooks.problems(path) == []
    assert strip_notebooks.main(["--check", str(path)]) == 0


def test_check_reports_a_clean_notebook_in_another_layout(tmp_path):
    path = tmp_path / "01_layout.ipynb"
    path.write_text(json.dumps(strip_notebooks.clean(dirty_notebook()), indent=2), encoding="utf-8")
    assert strip_notebooks.problems(path) == [
        "not in nbformat's layout (one-space indent, sorted keys, final newline)"]


def test_only_unmigrated_notebooks_wait():
    layout_tests = [test_committed_notebook_is_clean,
                    test_cell_ids_are_unique_and_follow_the_course_scheme,
                    test_exercises_then_check_helpers_then_collapsed_solutions,
                    test_sections_are_numbered_from_one]
    for path in strip_notebooks.course_notebooks():
        if path.name not in MIGRATED_ON_ANOTHER_BRANCH:
            continue
        failing = []
        for layout_test in layout_tests:
            try:
                layout_test(path)
            except (AssertionError, StopIteration):
                failing.append(layout_test.__name__)
        assert failing, (f"{path.name} passes every layout test now: remove it from "
                         "MIGRATED_ON_ANOTHER_BRANCH, so that they hold for it from now on")

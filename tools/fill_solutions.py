"""Fill an assignment notebook's stubs with its own worked solutions (notebook 11, the capstone).

    python tools/fill_solutions.py /tmp/11_solved.ipynb              # the capstone, solved
    python tools/fill_solutions.py --source IN.ipynb OUT.ipynb

(Write the solved form outside notebooks/: it is never committed.)

An assignment notebook holds stubs: code cells tagged `stub` whose functions and classes only
`raise NotImplementedError`. Its last markdown cell (id `solutions`) holds the worked solutions,
collapsed, as `**N. Title.**` followed by `<details><summary>Solution</summary>` and one
```` ```python ```` block. The solved form replaces the k-th stub cell by the code of the k-th
solution, refusing a pair that does not define the same names (so a solution cannot drift away
from its stub), and appends the remaining solutions (the exercises' answers, which call their
checks) as code cells at the end. Tests run both forms: the committed one must report "not written
yet" at its first check, the solved one must pass every check.
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CAPSTONE = REPO_ROOT / "notebooks" / "11_capstone_your_own_hourglass.ipynb"
SOLUTION = re.compile(
    r"^\*\*(\d+)\. (.+?)\*\*\s*\n<details><summary>Solution</summary>\s*\n(.*?)^</details>",
    re.MULTILINE | re.DOTALL)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def solutions(notebook) -> list[tuple[int, str, str]]:
    """`(number, title, code)` of every solution in the `solutions` cell, in order."""
    cells = [cell for cell in notebook.cells if cell.get("id") == "solutions"]
    if len(cells) != 1:
        raise ValueError("the notebook needs exactly one markdown cell with id `solutions`")
    found = []
    for number, title, body in SOLUTION.findall(cells[0].source):
        blocks = PYTHON_BLOCK.findall(body)
        if len(blocks) != 1:
            raise ValueError(f"solution {number} ({title}) needs exactly one python block, "
                             f"found {len(blocks)}")
        found.append((int(number), title.rstrip("."), blocks[0]))
    numbers = [number for number, _, _ in found]
    if numbers != list(range(1, len(found) + 1)):
        raise ValueError(f"solutions must be numbered 1, 2, 3, ... in order, found {numbers}")
    return found


def defined_names(code: str) -> set[str]:
    """The functions and classes `code` defines at its top level."""
    return {node.name for node in ast.parse(code).body
            if isinstance(node, ast.FunctionDef | ast.ClassDef)}


def stub_cells(notebook) -> list:
    return [cell for cell in notebook.cells
            if cell.cell_type == "code" and "stub" in cell.metadata.get("tags", [])]


def solved(notebook):
    """A copy of `notebook` with every stub replaced by its solution, the rest appended."""
    import nbformat

    notebook = copy.deepcopy(notebook)
    stubs, found = stub_cells(notebook), solutions(notebook)
    if len(found) < len(stubs):
        raise ValueError(f"{len(stubs)} stub cells but only {len(found)} solutions")
    for index, (cell, (number, title, code)) in enumerate(zip(stubs, found, strict=False)):
        if defined_names(cell.source) != defined_names(code):
            raise ValueError(f"stub cell {index + 1} defines {sorted(defined_names(cell.source))}"
                             f" but solution {number} ({title}) {sorted(defined_names(code))}")
        cell.source = code.rstrip("\n")
    for number, _title, code in found[len(stubs):]:
        cell = nbformat.v4.new_code_cell(code.rstrip("\n"))
        cell.id = f"solution-{number:02d}"
        notebook.cells.append(cell)
    return notebook


def main(argv: list[str] | None = None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path, help="where to write the solved notebook")
    parser.add_argument("--source", type=Path, default=CAPSTONE,
                        help="the assignment notebook (default: notebook 11)")
    args = parser.parse_args(argv)
    nbformat.write(solved(nbformat.read(args.source, as_version=4)), args.target)
    print(f"wrote {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

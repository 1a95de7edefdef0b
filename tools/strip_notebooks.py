"""Keep the course notebooks reviewable: no outputs, no execution counts, one cell-id scheme.

    python tools/strip_notebooks.py            # clean every notebooks/NN_*.ipynb in place
    python tools/strip_notebooks.py --check    # list what is not clean; exit 1 if anything is
    python tools/strip_notebooks.py PATH ...   # only these notebooks

A committed notebook holds what a learner should read and nothing a run leaves behind, so that a
diff shows only the change someone meant to make:

* code cells: `outputs` empty, `execution_count` null;
* cell metadata: only `tags` (the `parameters` tag drives smoke mode); run-time keys such as
  `execution`, `collapsed` or `scrolled` go;
* notebook metadata: only `kernelspec` and the language's name (no Python version, no saved
  widget state);
* cell ids (nbformat 4.5): present, unique, and in the course's one scheme: `cell-NN` (two or
  more digits, `cell-07`), optionally with one or two lower-case letters for a cell inserted later
  without renumbering its neighbours (`cell-07a`), plus the one descriptive id `solutions` for
  the solutions cell. An id, once committed, never changes, so diffs and review comments can point
  at a cell.

Cleaning renames what does not follow the scheme, and leaves every conforming id alone, so that
cleaning twice changes nothing:

* the course's old numbered schemes keep their number: `c07` -> `cell-07`, `related-07` and
  `capstone-07a` -> `cell-07` and `cell-07a`;
* any other id (a random one Jupyter gave a new cell, `9f1c2ab4` or a UUID; a descriptive name such
  as `rotary-picture`; a missing or repeated id) becomes an inserted-cell id after the cell before
  it: after `cell-07` comes `cell-07a`, then `cell-07b`. So ids keep the reading order, and a cell
  added in the editor is named by where it sits.

The file is written as nbformat writes it (one-space indent, sorted keys, UTF-8, final newline);
`--check` compares the exact text, so a notebook saved in any other layout is reported too.
`tests/repository/test_notebook_hygiene.py` runs the check on every committed notebook.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
#: The course's cell id: `cell-`, at least two digits, and up to two letters for a cell inserted
#: later (`cell-07`, `cell-22a`).
CELL_ID = re.compile(r"^cell-([0-9]{2,})([a-z]{0,2})$")
#: The one descriptive id: the "## Solutions" markdown cell at the end of every notebook.
SOLUTIONS_ID = "solutions"
#: Numbered ids of the course's earlier schemes (`c07`, `related-07`, `capstone-07a`), renamed to
#: `cell-` with the same number. Two or three digits only: `c1234567` is a random hex id.
LEGACY_ID = re.compile(r"^(?:c|related-|capstone-)([0-9]{2,3})([a-z]{0,2})$")
KEPT_CELL_METADATA = ("tags",)
KEPT_NOTEBOOK_METADATA = ("kernelspec", "language_info")


def course_notebooks() -> list[Path]:
    """The committed course notebooks, in course order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def notebook_text(notebook: dict) -> str:
    """The file text nbformat would write for `notebook`."""
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def is_course_id(cell_id: object) -> bool:
    """Whether `cell_id` follows the course's scheme (`cell-07`, `cell-07a` or `solutions`)."""
    return isinstance(cell_id, str) and (cell_id == SOLUTIONS_ID or bool(CELL_ID.match(cell_id)))


def _renamed_legacy(cell_id: object) -> object:
    """`c07` / `related-07` / `capstone-07` -> `cell-07`; any other id unchanged."""
    match = LEGACY_ID.match(cell_id) if isinstance(cell_id, str) else None
    return f"cell-{match.group(1)}{match.group(2)}" if match else cell_id


def _suffixes():
    """`a` .. `z`, then `aa` .. `zz`: the letters of inserted cells, in order."""
    letters = [chr(code) for code in range(ord("a"), ord("z") + 1)]
    yield from letters
    for first in letters:
        for second in letters:
            yield first + second


def _new_id(previous: str | None, numbered_later: bool, taken: set[str]) -> str:
    """A free id for a cell after the cell `previous` (None: the first cell). Inside the notebook
    (a numbered cell follows) it is an inserted cell, `cell-07a` after `cell-07`; at the end it
    takes the next number, so a notebook that had no ids at all is numbered `cell-00` onwards."""
    match = CELL_ID.match(previous) if previous else None
    if match and numbered_later:
        number = match.group(1)
        for suffix in _suffixes():
            if f"cell-{number}{suffix}" not in taken:
                return f"cell-{number}{suffix}"
    numbers = [int(m.group(1)) for m in map(CELL_ID.match, taken) if m]
    candidate = 0 if previous is None else max(numbers, default=-1) + 1
    while f"cell-{candidate:02d}" in taken:
        candidate += 1
    return f"cell-{candidate:02d}"


def _course_ids(cells: list[dict]) -> list[str]:
    """Every cell's id in the course's scheme: conforming ids kept, old numbered ones renamed,
    the rest (random, descriptive, missing, repeated) named by where they sit."""
    wanted = [_renamed_legacy(cell.get("id")) for cell in cells]
    kept = [is_course_id(cell_id) and cell_id not in wanted[:index]
            for index, cell_id in enumerate(wanted)]
    taken = {cell_id for cell_id, keep in zip(wanted, kept, strict=True) if keep}
    result: list[str] = []
    for index, (cell_id, keep) in enumerate(zip(wanted, kept, strict=True)):
        if not keep:
            numbered_later = any(later and CELL_ID.match(wanted[after])
                                 for after, later in enumerate(kept) if after > index)
            cell_id = _new_id(result[-1] if result else None, numbered_later, taken)
            taken.add(cell_id)
        result.append(cell_id)
    return result


def clean(notebook: dict) -> dict:
    """A copy of `notebook` (parsed .ipynb JSON) as it should be committed."""
    if notebook.get("nbformat") != 4:
        raise ValueError(f"only nbformat 4 notebooks are handled, got {notebook.get('nbformat')}")
    cleaned = copy.deepcopy(notebook)
    cleaned["nbformat_minor"] = max(5, cleaned.get("nbformat_minor", 0))  # 4.5: cell ids
    metadata = cleaned.get("metadata", {})
    cleaned["metadata"] = {key: metadata[key] for key in KEPT_NOTEBOOK_METADATA if key in metadata}
    if "language_info" in cleaned["metadata"]:
        cleaned["metadata"]["language_info"] = {
            "name": cleaned["metadata"]["language_info"].get("name", "python")}
    for cell, cell_id in zip(cleaned["cells"], _course_ids(cleaned["cells"]), strict=True):
        cell["id"] = cell_id
        cell["metadata"] = {key: cell["metadata"][key] for key in KEPT_CELL_METADATA
                            if key in cell.get("metadata", {})}
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return cleaned


def problems(path: Path) -> list[str]:
    """What keeps the notebook at `path` from being clean, one line each ([] when clean)."""
    text = path.read_text(encoding="utf-8")
    notebook = json.loads(text)
    cleaned = clean(notebook)
    found = []
    if notebook.get("nbformat_minor", 0) < 5:
        found.append(f"nbformat 4.{notebook.get('nbformat_minor')}: cell ids need 4.5 or later")
    for index, (before, after) in enumerate(zip(notebook["cells"], cleaned["cells"], strict=True)):
        if before.get("outputs"):
            found.append(f"cell {index} has outputs")
        if before.get("execution_count") is not None:
            found.append(f"cell {index} has an execution count")
        if before.get("id") != after["id"]:
            found.append(f"cell {index} id {before.get('id')!r} is not in the course's scheme, or "
                         f"missing or repeated (would become {after['id']!r})")
        if before.get("metadata", {}) != after["metadata"]:
            found.append(f"cell {index} has run-time metadata "
                         f"{sorted(set(before.get('metadata', {})) - set(after['metadata']))}")
    if notebook.get("metadata") != cleaned["metadata"]:
        found.append("notebook metadata holds more than the kernelspec and the language's name")
    if not found and text != notebook_text(cleaned):
        found.append("not in nbformat's layout (one-space indent, sorted keys, final newline)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path,
                        help="notebooks to clean (default: every notebooks/NN_*.ipynb)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; list what is not clean and exit 1 if anything is")
    args = parser.parse_args(argv)
    paths = args.paths or course_notebooks()
    dirty = 0
    for path in paths:
        if not path.is_file():
            parser.error(f"{path} is not a file")
        found = problems(path)
        if not found:
            continue
        dirty += 1
        if args.check:
            print(f"{path}:\n  " + "\n  ".join(found))
        else:
            cleaned = clean(json.loads(path.read_text(encoding="utf-8")))
            path.write_text(notebook_text(cleaned), encoding="utf-8")
            print(f"cleaned {path} ({len(found)} fixes)")
    if args.check and dirty:
        print(f"{dirty} notebook(s) not clean: run `python tools/strip_notebooks.py`")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())

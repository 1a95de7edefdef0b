"""Keep the course notebooks reviewable: no outputs, no execution counts, stable cell ids.

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
* cell ids (nbformat 4.5): present, unique, and either a descriptive name of letter-only words
  joined by dashes (`solutions`, `rotary-picture`) or the notebook's numbered pattern: one word
  for the whole notebook, then a number (`cell-07`, `c12`, `capstone-03`), optionally a letter or
  two for a cell inserted later without renumbering its neighbours (`c22a`). An id, once
  committed, never changes, so diffs and review comments can point at a cell. Jupyter gives a
  new cell a random id (`9f1c2ab4`, or a UUID); this tool renames such an id, or a missing or
  duplicated one, to the notebook's word with the next free number. Ids that already follow
  either rule are left alone, so cleaning twice changes nothing.

The file is written as nbformat writes it (one-space indent, sorted keys, UTF-8, final newline);
`--check` compares the exact text, so a notebook saved in any other layout is reported too.
`tests/test_notebook_hygiene.py` runs the check on every committed notebook.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
#: A stable, hand-readable cell id: a lower-case word (with its dash, if any), at least two
#: digits, and up to two letters for a cell inserted later (`cell-07`, `c22a`).
STABLE_ID = re.compile(r"^([a-z]+-?)([0-9]{2,})([a-z]{0,2})$")
#: A descriptive id (`solutions`, `rotary-picture`): letters only, so never a random hex id.
NAMED_ID = re.compile(r"^[a-z]+(-[a-z]+)*$")
DEFAULT_ID_PREFIX = "cell-"
KEPT_CELL_METADATA = ("tags",)
KEPT_NOTEBOOK_METADATA = ("kernelspec", "language_info")


def course_notebooks() -> list[Path]:
    """The committed course notebooks, in course order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def notebook_text(notebook: dict) -> str:
    """The file text nbformat would write for `notebook`."""
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def _id_prefix(ids: list[str]) -> str:
    """The word most of the notebook's stable ids start with (`cell-` if none is stable yet)."""
    prefixes = Counter(match.group(1) for match in map(STABLE_ID.match, ids) if match)
    return prefixes.most_common(1)[0][0] if prefixes else DEFAULT_ID_PREFIX


def _stable_ids(cells: list[dict]) -> list[str]:
    """Every cell's id: kept when stable and unique, otherwise the next free `prefix + number`.

    Stable means a descriptive name, or the pattern *and* the notebook's own word: a random id
    that happens to look like `abc12345` is still renamed in a notebook whose ids are `cell-NN`.
    """
    ids = [cell.get("id") if isinstance(cell.get("id"), str) else "" for cell in cells]
    prefix = _id_prefix(ids)
    matches = [match for match in map(STABLE_ID.match, ids) if match and match.group(1) == prefix]
    width = max([2, *(len(match.group(2)) for match in matches)])
    next_number = max((int(match.group(2)) for match in matches), default=-1) + 1
    seen: set[str] = set()
    result = []
    for cell_id in ids:
        match = STABLE_ID.match(cell_id)
        numbered = match is not None and match.group(1) == prefix
        if not (numbered or NAMED_ID.match(cell_id)) or cell_id in seen:
            cell_id = f"{prefix}{next_number:0{width}d}"
            next_number += 1
        seen.add(cell_id)
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
    for cell, cell_id in zip(cleaned["cells"], _stable_ids(cleaned["cells"]), strict=True):
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
            found.append(f"cell {index} id {before.get('id')!r} is missing, repeated or random "
                         f"(would become {after['id']!r})")
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

"""The package's shape, as ARCHITECTURE.md and CONTRIBUTING.md state it: the module table lists
every module, each module's docstring names the concept its row says it holds, imports run only
down the layers, and no module or function outgrows what a reader takes in at once."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = REPO_ROOT / "hourglass_edu"
ROW = re.compile(r"^\| `([\w/]+\.py)` \| (\d) \| (.+?) \|")
# Code lines: docstrings, comments and blank lines do not count, so that a module is never split
# because its explanations are long (issue 31).
MAX_MODULE_CODE_LINES = 300
MAX_FUNCTION_LINES = 60
# Words too common to name a concept; everything else of four letters or more may.
NOT_CONCEPTS = {"also", "does", "each", "every", "from", "into", "more", "most", "only", "over",
                "same", "such", "than", "that", "their", "them", "then", "they", "this", "what",
                "when", "where", "which", "with", "names", "public", "module", "notebook"}


def architecture_layers() -> dict[str, int]:
    """module path (relative to hourglass_edu/) -> layer, from ARCHITECTURE.md's module table."""
    text = (REPO_ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    return {m.group(1): int(m.group(2)) for line in text.splitlines() if (m := ROW.match(line))}


def architecture_rows() -> dict[str, str]:
    """module path -> what ARCHITECTURE.md's table says it holds."""
    text = (REPO_ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    return {m.group(1): m.group(3) for line in text.splitlines() if (m := ROW.match(line))}


def concept_stems(text: str) -> set[str]:
    """The words of `text` that can name a concept, without plural / -ing / -ed endings
    (`dependency_matrix` counts as "dependency" and "matrix")."""
    stems = set()
    for word in re.findall(r"[a-z][a-z0-9-]*", text.lower().replace("_", " ")):
        for ending in ("ings", "ing", "ies", "es", "ed", "s"):
            if word.endswith(ending) and len(word) - len(ending) >= 4:
                word = word[: -len(ending)]
                break
        if len(word) >= 4 and word not in NOT_CONCEPTS:
            stems.add(word)
    return stems


def shared_concepts(first: set[str], second: set[str]) -> set[str]:
    """Stems in both sets, or one a prefix of the other ("depend" / "dependency")."""
    return {a for a in first for b in second
            if a == b or (min(len(a), len(b)) >= 5 and (a.startswith(b) or b.startswith(a)))}


def package_modules() -> list[str]:
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))


def dotted(module: str) -> str:
    """'training/trainer.py' -> 'hourglass_edu.training.trainer'; packages -> their name."""
    parts = ["hourglass_edu", *module[:-3].split("/")]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every hourglass_edu module `path` imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    # The root package runs first on every import of a submodule; only its named parts count.
    return {name for name in names if name.startswith("hourglass_edu.")}


def test_the_module_table_lists_every_module_and_nothing_else():
    listed, present = set(architecture_layers()), set(package_modules())
    assert not present - listed, f"add to ARCHITECTURE.md: {sorted(present - listed)}"
    assert not listed - present, f"ARCHITECTURE.md lists missing {sorted(listed - present)}"


@pytest.mark.parametrize("module", package_modules())
def test_imports_never_run_up_the_layers(module):
    layers = architecture_layers()
    by_name = {dotted(name): layer for name, layer in layers.items()}
    own = layers[module]
    for name in imported_modules(PACKAGE / module):
        layer = by_name.get(name)
        if layer is None:  # `from package import something` that is not a module
            continue
        assert layer <= own, f"{module} (layer {own}) imports {name} (layer {layer})"


@pytest.mark.parametrize("module", package_modules())
def test_every_module_opens_with_a_docstring_naming_its_concept(module):
    """The first line of the docstring names a concept of the module's row in ARCHITECTURE.md,
    so a reader who opens the file sees at once the idea the map says it holds."""
    docstring = ast.get_docstring(ast.parse((PACKAGE / module).read_text(encoding="utf-8")))
    assert docstring, f"{module} has no docstring"
    first_line = docstring.splitlines()[0]
    holds = architecture_rows()[module]
    assert shared_concepts(concept_stems(first_line), concept_stems(holds)), (
        f"{module}: the docstring's first line {first_line!r} names none of the concepts "
        f"ARCHITECTURE.md says it holds ({holds!r}): name one of them, or correct the row")


def test_the_concept_check_tells_a_named_concept_from_filler():
    assert shared_concepts(concept_stems("Measuring which inputs each output depends on"),
                           concept_stems("`dependency_matrix`, PCA"))
    assert shared_concepts(concept_stems("Shift, then pool each group"),
                           concept_stems("pooling diagram"))
    assert not shared_concepts(concept_stems("This module holds some of the code, with care."),
                               concept_stems("shift right by k-1, shortening, upsampling"))


def code_lines(text: str) -> int:
    """Lines that hold code: not docstrings (of the module, classes, functions), comments or
    blank lines."""
    docstrings = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    skipped = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
               tokenize.ENDMARKER}
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in skipped:
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - docstrings)


def module_lines() -> dict[str, int]:
    return {module: code_lines((PACKAGE / module).read_text(encoding="utf-8"))
            for module in package_modules()}


def test_code_lines_leave_out_docstrings_comments_and_blank_lines():
    text = '''"""Module docstring,
over two lines."""

import os  # a comment


def f(x):
    """One line."""
    # a comment line
    return (x +
            1)
'''
    assert code_lines(text) == 4    # import, def, and the two lines of the return


def function_lines() -> dict[str, int]:
    """'module:Class.method' (or 'module:function') -> lines from `def` to its last line."""
    sizes = {}
    for module in package_modules():
        tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
        for owner, node in defined_functions(tree):
            sizes[f"{module}:{owner}{node.name} (line {node.lineno})"] = (
                node.end_lineno - node.lineno + 1)
    return sizes


def defined_functions(tree: ast.AST, owner: str = ""):
    """(owner prefix, function node) for every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield owner, node
            yield from defined_functions(node, f"{owner}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from defined_functions(node, f"{owner}{node.name}.")
        else:
            yield from defined_functions(node, owner)


def offenders(sizes: dict[str, int], limit: int) -> str:
    over = sorted(((size, name) for name, size in sizes.items() if size > limit), reverse=True)
    return "\n".join(f"  {name}: {size} lines" for size, name in over)


def test_no_module_is_longer_than_a_reader_takes_in():
    too_long = offenders(module_lines(), MAX_MODULE_CODE_LINES)
    assert not too_long, (f"modules over {MAX_MODULE_CODE_LINES} code lines (split each by "
                          "concept and give the new modules rows in ARCHITECTURE.md):\n"
                          f"{too_long}")


def test_no_function_is_longer_than_one_screen():
    too_long = offenders(function_lines(), MAX_FUNCTION_LINES)
    assert not too_long, (f"functions over {MAX_FUNCTION_LINES} lines, from `def` to the last "
                          f"line (give their steps names of their own):\n{too_long}")


def test_the_size_check_finds_methods_and_nested_functions():
    body = "".join(["        x = 1\n"] * 60)
    source = f"class A:\n    def method(self):\n{body}        def inner():\n            pass\n"
    found = {f"{owner}{node.name}": node.end_lineno - node.lineno + 1
             for owner, node in defined_functions(ast.parse(source))}
    assert found == {"A.method": 63, "A.method.inner": 2}
    assert offenders({"a.py:A.method": 63, "a.py:f": 60}, MAX_FUNCTION_LINES) == (
        "  a.py:A.method: 63 lines")

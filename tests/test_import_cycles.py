"""No module-level import cycle in hourglass_edu (issue 31): a module that needs another only for an
annotation imports it under `TYPE_CHECKING`, so each module can be read, and imported, after the
ones it builds on. The walk reads the source (no import runs): imports at a module's top level
count, those inside functions and `if TYPE_CHECKING:` blocks do not."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hourglass_edu"


def module_name(path: Path) -> str:
    parts = ["hourglass_edu", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def top_level_imports(tree: ast.Module):
    """The import statements a module runs when it is imported: its top level, and inside
    `if`/`try`/`with` blocks there, but not in functions, classes' methods or TYPE_CHECKING."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif is_type_checking_block(node):
            pending.extend(node.orelse)
        else:
            pending.extend(child for child in ast.iter_child_nodes(node)
                           if isinstance(child, ast.stmt))


def module_imports(path: Path, modules: set[str]) -> set[str]:
    """The hourglass_edu modules that importing `path` imports directly (a package's
    `__init__` runs before any of its submodules, so importing `a.b` imports `a` too)."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: set[str] = set()
    for node in top_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            parts = target.split(".")
            for end in range(1, len(parts) + 1):
                name = ".".join(parts[:end])
                if name in modules and name != own and not own.startswith(name + "."):
                    found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: module_imports(path, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == "open":
                return stack[stack.index(successor):] + [successor]
            if successor not in state and (cycle := visit(successor)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_sees_a_cycle_and_a_chain():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_walk_skips_type_checking_blocks_and_function_bodies():
    tree = ast.parse("import os\nif TYPE_CHECKING:\n    import sys\ndef f():\n    import json\n"
                     "try:\n    import math\nexcept ImportError:\n    pass\n")
    assert sorted(alias.name for node in top_level_imports(tree) for alias in node.names) == [
        "math", "os"]


def test_hourglass_edu_has_no_module_level_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, ("import cycle: " + " -> ".join(cycle or [])
                           + "; import what only an annotation needs under TYPE_CHECKING")

"""ARCHITECTURE.md is the map of the package: it lists every module; imports follow its layers."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "hourglass_edu"
ROW = re.compile(r"^\| `([\w/]+\.py)` \| (\d) \|")


def architecture_layers() -> dict[str, int]:
    """module path (relative to hourglass_edu/) -> layer, from ARCHITECTURE.md's module table."""
    text = (REPO_ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    return {m.group(1): int(m.group(2)) for line in text.splitlines() if (m := ROW.match(line))}


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
    docstring = ast.get_docstring(ast.parse((PACKAGE / module).read_text(encoding="utf-8")))
    assert docstring and len(docstring.splitlines()[0]) > 20, module

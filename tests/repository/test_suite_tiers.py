"""The two test tiers stay what CONTRIBUTING.md says: plain `pytest` runs the fast tier, CI runs
the complete suite, every notebook and browser test is slow, and the central list of slow tests
(tests/tiers.py) names only tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from tiers import ALL_TESTS, SLOW_ELSEWHERE, mark_slow_tests

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS = REPO_ROOT / "tests"
COMPLETE_SUITE = 'pytest -m "slow or not slow"'


def defined_tests(path: Path) -> set[str]:
    """Names of the test functions of a test file, methods of test classes included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name.startswith("test")}


def test_every_test_listed_as_slow_still_exists():
    stale = {}
    for file_name, names in SLOW_ELSEWHERE.items():
        path = TESTS / file_name
        assert path.is_file(), f"tiers.SLOW_ELSEWHERE names {file_name}, which is gone"
        if names != ALL_TESTS:
            missing = sorted(set(names) - defined_tests(path))
            if missing:
                stale[file_name] = missing
    assert not stale, (f"tiers.SLOW_ELSEWHERE names tests that no longer exist: {stale}; "
                       "mark the renamed tests @pytest.mark.slow in their files instead")


def test_plain_pytest_is_the_fast_tier_and_ci_runs_both():
    options = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert '-m "not slow"' in options["tool"]["pytest"]["ini_options"]["addopts"]
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(rf"\n{re.escape(COMPLETE_SUITE)}( --[\w=-]+)* \|\|", ci), (
        ".ci/run must run the complete suite (options such as --durations may follow)")
    plain_pytest = re.compile(r"(^|&& )pytest[ \t]*($|#)", re.MULTILINE)
    for document in ("README.md", "CONTRIBUTING.md"):
        text = (REPO_ROOT / document).read_text(encoding="utf-8")
        assert plain_pytest.search(text), f"{document} must give the fast tier, plain `pytest`"
        assert COMPLETE_SUITE in text, f"{document} must give the complete suite's command"


def test_ci_ends_with_the_colab_stack_tier():
    """.ci/run runs .ci/colab-stack, and that runs on Colab's pins what issue 34 asked of it."""
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^bash \.ci/colab-stack$", ci, re.MULTILINE)
    tier = (REPO_ROOT / ".ci" / "colab-stack").read_text(encoding="utf-8")
    assert "--constraint \"$constraints\"" in tier and "requirements/colab.txt" in tier
    for needed in ("tests/repository/test_colab_stack.py", "tests/test_widgets.py",
                   "tests/browser/test_classic_notebook.py", "07_generation",
                   "08_inside_the_hourglass", "09_finetuning_haiku",
                   "11_capstone_your_own_hourglass", "HOURGLASS_EDU_COLAB_STACK=1"):
        assert needed in tier, f".ci/colab-stack no longer runs {needed}"


class FakeItem:
    """What the tier hook reads of a collected test: its file, name and markers."""

    def __init__(self, file_name: str, name: str, markers=()):
        self.fspath = TESTS / file_name
        self.name = self.originalname = name
        self.markers = set(markers)

    def get_closest_marker(self, name):
        return name if name in self.markers else None

    def add_marker(self, marker):
        self.markers.add(marker.name)


@pytest.mark.parametrize("markers, slow", [
    ((), False), (("notebook",), True), (("browser",), True), (("corpus",), False)])
def test_notebook_and_browser_tests_join_the_slow_tier(markers, slow):
    item = FakeItem("test_something_new.py", "test_x", markers)
    mark_slow_tests([item])
    assert ("slow" in item.markers) == slow


def test_tests_listed_as_slow_join_the_slow_tier():
    file_name, names = next(iter(SLOW_ELSEWHERE.items()))
    name = "test_anything" if names == ALL_TESTS else sorted(names)[0]
    listed, other = FakeItem(file_name, name), FakeItem("test_something_new.py", name)
    mark_slow_tests([listed, other])
    assert "slow" in listed.markers and "slow" not in other.markers

"""The two test tiers stay what CONTRIBUTING.md says: plain `pytest` runs the fast tier, CI runs
the complete suite, every notebook and browser test is slow, and every test that starts a process
is marked slow in its own file."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from tiers import SLOW_MARKERS, mark_slow_tests

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS = REPO_ROOT / "tests"
COMPLETE_SUITE = 'pytest -m "slow or not slow"'


#: Calls that start a process: `subprocess.<name>(...)`.
PROCESS_STARTERS = {"run", "Popen", "call", "check_call", "check_output"}
TIER_MARKS = {"slow", *SLOW_MARKERS}


def mark_names(node: ast.AST) -> set[str]:
    """The X of every `pytest.mark.X` (called or not) under `node`."""
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Attribute) and n.value.attr == "mark"}


def starts_a_process(node: ast.AST, helpers: set[str] = frozenset()) -> bool:
    """Does `node` call `subprocess.<starter>` or one of `helpers` (functions that do)?"""
    for call in ast.walk(node):
        if not isinstance(call, ast.Call):
            continue
        function = call.func
        if (isinstance(function, ast.Attribute) and function.attr in PROCESS_STARTERS
                and isinstance(function.value, ast.Name) and function.value.id == "subprocess"):
            return True
        if isinstance(function, ast.Name) and function.id in helpers:
            return True
    return False


def is_fixture(function: ast.FunctionDef) -> bool:
    return any("fixture" in ast.unparse(decorator) for decorator in function.decorator_list)


def unmarked_process_tests(source: str) -> list[str]:
    """Tests of a test file that start a process, in their body, through a function of the file
    or through a fixture of the file, without a `slow` (or notebook, browser) mark of their own or
    of the file's `pytestmark`."""
    tree = ast.parse(source)
    file_marks = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "pytestmark"
                for target in node.targets):
            file_marks |= mark_names(node.value)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    starters: set[str] = set()
    while True:  # functions of the file that start a process, directly or through another
        found = {name for name, function in functions.items()
                 if name not in starters and starts_a_process(function, starters)}
        if not found:
            break
        starters |= found
    process_fixtures = {name for name in starters if is_fixture(functions[name])}
    unmarked = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test"):
            continue
        uses_fixture = any(argument.arg in process_fixtures for argument in node.args.args)
        marked = (file_marks | mark_names(ast.Module(body=node.decorator_list, type_ignores=[])))
        if (node.name in starters or uses_fixture) and not marked & TIER_MARKS:
            unmarked.append(node.name)
    return unmarked


def test_every_test_that_starts_a_process_is_marked_slow_in_its_file():
    unmarked = {str(path.relative_to(TESTS)): names for path in sorted(TESTS.rglob("test_*.py"))
                if (names := unmarked_process_tests(path.read_text(encoding="utf-8")))}
    assert not unmarked, (f"tests that start a process without a slow mark: {unmarked}; mark "
                          "each @pytest.mark.slow (or the file: pytestmark = pytest.mark.slow)")


MARK_CHECK_CASES = [  # (a test file's source, the tests the check must report)
    ("import subprocess\ndef test_a():\n    subprocess.run(['true'])\n", ["test_a"]),
    ("import subprocess\ndef cli():\n    return subprocess.Popen(['true'])\n"
     "def helper():\n    return cli()\ndef test_a():\n    helper()\n", ["test_a"]),
    ("import pytest, subprocess\n@pytest.fixture\ndef server():\n    subprocess.Popen(['x'])\n"
     "def test_a(server):\n    pass\n", ["test_a"]),
    ("import pytest, subprocess\n@pytest.mark.slow\ndef test_a():\n    subprocess.run(['x'])\n",
     []),
    ("import pytest, subprocess\npytestmark = [pytest.mark.slow]\n"
     "def test_a():\n    subprocess.run(['x'])\n", []),
    ("import pytest\n@pytest.mark.parametrize('cli', [1])\ndef test_a(cli):\n    pass\n", []),
]


def test_the_mark_check_finds_unmarked_process_tests():
    for source, unmarked in MARK_CHECK_CASES:
        assert unmarked_process_tests(source) == unmarked, source


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

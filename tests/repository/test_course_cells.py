"""Every notebook installs and opens the library from the one place `hourglass_edu/course.py` names.

A Colab install cell runs before the package exists, so each notebook must spell the repository
URL and ref out literally; these tests make `course.py` the single source of truth anyway: every
install cell, every Colab badge (in the notebooks and the README) must use exactly its URL and ref,
and the URL must be the one pyproject.toml declares. Every parameters cell picks its settings by
the course's `PROFILE` (smoke / cpu / gpu) and runs in each of them.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch

import hourglass_edu
from hourglass_edu import course

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
GIT_URL = re.compile(r"git\+[^\s\"'@]+(?:@[^\s\"']+)?")
BADGE_URL = re.compile(r"https://colab\.research\.google\.com/github/[^\s)\"]+")


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def source(cell: dict) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else text


def install_cell(path: Path) -> str:
    return source(next(c for c in cells(path) if c["cell_type"] == "code"))


def test_course_url_is_the_projects():
    urls = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert course.REPOSITORY_URL == urls["urls"]["Homepage"] == urls["urls"]["Repository"]


def test_a_release_tag_names_this_version():
    if course.COURSE_REF.startswith("v"):  # a tag; a commit hash would be 40 hex digits
        assert course.COURSE_REF == f"v{hourglass_edu.__version__}", (
            "COURSE_REF names a release tag: keep it in step with the package version")
    else:
        assert re.fullmatch(r"[0-9a-f]{40}", course.COURSE_REF), course.COURSE_REF


def test_install_command_pins_the_ref():
    assert course.colab_install_command() == (
        f'%pip install -q "hourglass_edu @ git+{course.REPOSITORY_URL}@{course.COURSE_REF}"')


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_install_cell_uses_the_course_url_and_ref(path):
    text = install_cell(path)
    assert "google.colab" in text
    pip_lines = [line.strip() for line in text.splitlines() if "%pip" in line]
    assert pip_lines == [course.colab_install_command()], (
        f"{path.name}: the Colab cell must install with exactly "
        f"{course.colab_install_command()!r} (hourglass_edu/course.py), found {pip_lines}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_cell_is_the_courses(path):
    assert install_cell(path) == course.colab_cell_source(), (
        f"{path.name}: the first code cell must be exactly hourglass_edu/course.py's "
        "colab_cell_source() (copy it in, or change it there for every notebook)")


def run_colab_cell(monkeypatch, ipywidgets_version: str | None) -> list[str]:
    """Run the Colab cell with a stand-in google.colab and an ipywidgets of `ipywidgets_version`
    (None: not on Colab); returns what it asked of IPython and of Colab, in order."""
    from IPython.core.inputtransformer2 import TransformerManager

    asked: list[str] = []

    class Output:
        def enable_custom_widget_manager(self):
            asked.append("enable_custom_widget_manager")

    class Shell:
        def run_line_magic(self, name, line):
            asked.append(f"%{name} {line}")

    if ipywidgets_version is None:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    else:
        colab = types.ModuleType("google.colab")
        colab.output = Output()
        google = types.ModuleType("google")
        google.colab = colab
        monkeypatch.setitem(sys.modules, "google", google)
        monkeypatch.setitem(sys.modules, "google.colab", colab)
        installed = types.ModuleType("ipywidgets")
        installed.__version__ = ipywidgets_version
        monkeypatch.setitem(sys.modules, "ipywidgets", installed)
    code = TransformerManager().transform_cell(course.colab_cell_source())
    exec(compile(code, "colab cell", "exec"), {"get_ipython": Shell})
    return asked


@pytest.mark.parametrize("version, custom_manager", [
    ("7.7.1", False),  # Colab's own: its widget manager shows it
    ("8.1.5", True),   # installed by the learner: needs the custom widget manager
])  # fmt: skip
def test_colab_cell_turns_on_the_custom_widget_manager_only_for_ipywidgets_8(
        monkeypatch, version, custom_manager):
    asked = run_colab_cell(monkeypatch, version)
    install = course.colab_install_command().removeprefix("%pip ")
    assert asked == [f"%pip {install}"] + ["enable_custom_widget_manager"] * custom_manager


def test_colab_cell_does_nothing_off_colab(monkeypatch):
    assert run_colab_cell(monkeypatch, None) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_other_install_source_in_the_notebook(path):
    expected = f"git+{course.REPOSITORY_URL}@{course.COURSE_REF}"
    for index, cell in enumerate(cells(path)):
        for url in GIT_URL.findall(source(cell)):
            assert url == expected, f"{path.name} cell {index} installs from {url}, not {expected}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_badge_opens_this_notebook_at_the_ref(path):
    badges = BADGE_URL.findall(source(cells(path)[0]))
    assert badges == [course.colab_badge_url(path.name)], (
        f"{path.name}: the badge must link {course.colab_badge_url(path.name)}, found {badges}")


def test_readme_badges_open_the_notebooks_at_the_ref():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    badges = BADGE_URL.findall(readme)
    assert badges, "the README's course map has no Colab badges"
    expected = {course.colab_badge_url(path.name) for path in NOTEBOOKS}
    assert set(badges) == expected, sorted(set(badges) ^ expected)


# ---- profiles: every parameters cell sizes its work by one PROFILE ------------------------------


def parameters_cell(path: Path) -> str:
    tagged = [c for c in cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell must be tagged `parameters`"
    return source(tagged[0])


def profile_tables(text: str) -> list[ast.Dict]:
    """The dict literals the cell indexes with PROFILE: `{"smoke": ..., ...}[PROFILE]`."""
    return [node.value for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Dict)
            and isinstance(node.slice, ast.Name) and node.slice.id == "PROFILE"]


def test_default_profile_follows_the_environment():
    assert course.default_profile({"HOURGLASS_EDU_SMOKE": "1"}, cuda_available=True) == "smoke"
    assert course.default_profile({}, cuda_available=True) == "gpu"
    assert course.default_profile({}, cuda_available=False) == "cpu"
    chosen = {"HOURGLASS_EDU_PROFILE": "cpu", "HOURGLASS_EDU_SMOKE": "1"}
    assert course.default_profile(chosen, cuda_available=True) == "cpu"
    with pytest.raises(ValueError, match="smoke, cpu, gpu"):
        course.default_profile({"HOURGLASS_EDU_PROFILE": "laptop"})


def test_default_device_follows_the_environment():
    assert course.default_device({}, cuda_available=True) == "cuda"
    assert course.default_device({}, cuda_available=False) == "cpu"
    assert course.default_device({"HOURGLASS_EDU_DEVICE": "cpu"}, cuda_available=True) == "cpu"
    with pytest.raises(ValueError, match="HOURGLASS_EDU_DEVICE=.laptop.: unknown device"):
        course.default_device({"HOURGLASS_EDU_DEVICE": "laptop"})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_picks_a_profile(path):
    text = parameters_cell(path)
    assert "PROFILE = default_profile()" in text.splitlines(), (
        f"{path.name}: the parameters cell must set PROFILE = default_profile() "
        "(hourglass_edu.course), which a learner may then override")
    assert "DEVICE = default_device()" in text.splitlines(), (
        f"{path.name}: the parameters cell must set DEVICE = default_device() "
        "(hourglass_edu.course), so CI can run it on the simulated accelerator")
    for table in profile_tables(text):
        keys = [key.value for key in table.keys if isinstance(key, ast.Constant)]
        assert keys == list(course.PROFILES), (
            f"{path.name} line {table.lineno}: a table indexed by PROFILE needs one entry per "
            f"profile, in the order {course.PROFILES}; found {keys}")


@pytest.mark.parametrize("profile", course.PROFILES)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_runs_in_every_profile(path, profile, monkeypatch):
    monkeypatch.setenv("HOURGLASS_EDU_PROFILE", profile)
    threads = torch.get_num_threads()
    namespace: dict = {}
    try:
        exec(compile(parameters_cell(path), f"{path.name}:parameters", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    assert namespace["PROFILE"] == profile
    assert namespace["SMOKE"] == (profile == "smoke")

"""pyproject.toml and environment.yml must install the same packages."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower().replace("_", "-")


def environment_yml() -> tuple[str, list[str], list[str], list[str]]:
    """(env name, channels, conda dependencies, pip requirements), read line by line: the file
    is a fixed, simple shape, so no YAML parser is needed."""
    name, channels, conda, pip = "", [], [], []
    section = None
    for raw in (REPO_ROOT / "environment.yml").read_text(encoding="utf-8").splitlines():
        line = raw.split(" #")[0].rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith("name:"):
            name = line.split(":", 1)[1].strip()
        elif not line.startswith(" "):
            section = line.rstrip(":")
        elif section == "dependencies" and line.strip() == "- pip:":
            section = "pip"
        elif section == "pip" and line.startswith("      - "):
            pip.append(line.strip()[2:])
        elif section in ("dependencies", "pip") and line.startswith("  - "):
            section = "dependencies"
            conda.append(line.strip()[2:])
        elif section == "channels" and line.startswith("  - "):
            channels.append(line.strip()[2:])
    return name, channels, conda, pip


def test_environment_yml_installs_what_pyproject_declares():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    declared = {normalise(r) for r in
                project["dependencies"] + extras["notebooks"] + extras["dev"]}
    name, _, conda, pip = environment_yml()
    assert name == "hourglass-edu"
    assert len(pip) == len(set(pip)), "environment.yml lists a package twice"
    assert {normalise(r) for r in pip} == declared
    assert normalise("python" + project["requires-python"]) in {normalise(c) for c in conda}


def test_environment_yml_parser_sees_every_entry():
    text = (REPO_ROOT / "environment.yml").read_text(encoding="utf-8")
    _, channels, conda, pip = environment_yml()
    entries = [line for line in text.splitlines()
               if line.lstrip().startswith("- ") and line.strip() != "- pip:"]
    assert len(channels) + len(conda) + len(pip) == len(entries)
    assert "pip" in conda and pip

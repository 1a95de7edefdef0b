"""Write requirements/colab.txt: the package versions Colab's GPU runtime ships, from backend-info.

    python tools/refresh_colab_pins.py --mirror PATH/TO/backend-info      # a clone (bare is fine)
    python tools/refresh_colab_pins.py --mirror PATH --commit a724079      # that commit, not HEAD
    python tools/refresh_colab_pins.py --freeze pip-freeze.gpu.txt --commit SHA --date 2026-08-19 \\
        --python 3.13.15                                                   # a downloaded file
    python tools/refresh_colab_pins.py --mirror PATH --check               # exit 1 if out of date

Colab publishes what its runtime holds in github.com/googlecolab/backend-info: `pip-freeze.gpu.txt`
(`pip freeze` of the GPU runtime) and `os-info-gpu.txt` (its Python). The output keeps every
`name==version` line of the freeze, in its order, under a header that names the commit, its date
and the Python; lines that install from a URL or a folder (Google's own builds, NVIDIA's index,
`-e` installs) are left out and listed in the header, since pip cannot take them as constraints
and they are not on PyPI. A name pinned twice is refused (pip could meet neither pin).

Who reads it: the Colab-stack tier (.ci/colab-stack) uses it as pip constraints, so each package it
installs gets Colab's version (except torch: Colab's is a CUDA build, the tier installs this
machine's CPU torch), and tests/repository/test_dependency_bounds.py checks that pyproject.toml's
lower bounds admit every pinned version.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUT = REPO_ROOT / "requirements" / "colab.txt"
SOURCE_REPOSITORY = "github.com/googlecolab/backend-info"
FREEZE_FILE = "pip-freeze.gpu.txt"
OS_INFO_FILE = "os-info-gpu.txt"

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")
URL_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*@\s*\S+$")
EDITABLE = re.compile(r"^-e\s+(\S+)$")  # `pip freeze` writes an editable install so
PYTHON_LINE = re.compile(r"^Python (\d+\.\d+\.\d+)\s*$", re.MULTILINE)
# The header lines the tests read back (parse_pins): keep their wording.
HEADER_COMMIT = re.compile(r"^# backend-info commit: ([0-9a-f]{40}) \((\d{4}-\d{2}-\d{2})\)$")
HEADER_PYTHON = re.compile(r"^# Python: (\d+\.\d+\.\d+)$")
HEADER_LEFT_OUT = re.compile(r"^# Left out \(installed from URLs\): (.*)$")


class PinsError(ValueError):
    """A freeze, a mirror or a pins file that cannot be read; the message names it."""


@dataclass
class ColabPins:
    commit: str  # the backend-info commit, 40 hex digits
    date: str  # its date, YYYY-MM-DD
    python: str  # Colab's Python, e.g. 3.13.15
    pins: dict[str, str] = field(default_factory=dict)  # name as written -> version, in order
    left_out: list[str] = field(default_factory=list)  # names installed from URLs

    def version(self, name: str) -> str | None:
        """The pinned version of `name` (compared as PEP 503 normalizes names), or None."""
        wanted = normalize(name)
        return next((v for n, v in self.pins.items() if normalize(n) == wanted), None)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_freeze(text: str, where: str) -> tuple[dict[str, str], list[str]]:
    """`pip freeze` output -> ({name: version}, [names installed from URLs])."""
    pins: dict[str, str] = {}
    left_out: list[str] = []
    seen: dict[str, int] = {}  # normalized name -> line
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if match := PIN.match(line):
            name = normalize(match[1])
            if name in seen:
                raise PinsError(f"{where} line {number}: {match[1]} is pinned again (first on "
                                f"line {seen[name]}): is it two freezes joined?")
            seen[name] = number
            pins[match[1]] = match[2]
        elif match := URL_REQUIREMENT.match(line):
            left_out.append(match[1])
        elif match := EDITABLE.match(line):
            egg = re.search(r"#egg=([A-Za-z0-9._-]+)", match[1])
            left_out.append(egg[1] if egg else match[1])
        else:
            raise PinsError(f"{where} line {number}: {line[:80]!r} is neither name==version nor "
                            "name @ URL; is it a `pip freeze` output?")
    for needed in ("torch", "ipywidgets"):
        if not any(normalize(name) == needed for name in pins):
            raise PinsError(f"{where} pins no {needed}: is it Colab's {FREEZE_FILE}?")
    return pins, left_out


def python_version(os_info: str, where: str) -> str:
    match = PYTHON_LINE.search(os_info)
    if match is None:
        raise PinsError(f"{where} has no 'Python X.Y.Z' line: is it Colab's {OS_INFO_FILE}?")
    return match[1]


def _git(mirror: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(mirror), *args], capture_output=True, text=True,
                              timeout=60)  # fmt: skip
    except FileNotFoundError:
        raise PinsError("git is not installed: use --freeze with a downloaded file") from None
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["failed"])[-1]
        raise PinsError(f"--mirror {mirror}: git {' '.join(args)}: {message}")
    return done.stdout


def from_mirror(mirror: Path, commit: str = "HEAD") -> ColabPins:
    """Read the freeze and the Python version of `commit` in a clone of backend-info."""
    if not mirror.exists():
        raise PinsError(f"--mirror {mirror} does not exist: give a clone of {SOURCE_REPOSITORY}")
    full, date = _git(mirror, "show", "-s", "--format=%H %cs", f"{commit}^{{commit}}").split()
    pins, left_out = parse_freeze(_git(mirror, "show", f"{full}:{FREEZE_FILE}"),
                                  f"{FREEZE_FILE} at {full[:12]}")  # fmt: skip
    python = python_version(_git(mirror, "show", f"{full}:{OS_INFO_FILE}"),
                            f"{OS_INFO_FILE} at {full[:12]}")  # fmt: skip
    return ColabPins(full, date, python, pins, left_out)


def from_freeze(path: Path, commit: str, date: str, python: str) -> ColabPins:
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise PinsError(f"--commit {commit!r}: with --freeze, name the backend-info commit the "
                        "file comes from in full (40 hex digits)")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date or ""):
        raise PinsError(f"--date {date!r}: with --freeze, give the commit's date as YYYY-MM-DD")
    if not re.fullmatch(r"\d+\.\d+\.\d+", python or ""):
        raise PinsError(f"--python {python!r}: with --freeze, give Colab's Python as X.Y.Z "
                        f"({OS_INFO_FILE} says it)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PinsError(f"--freeze {path}: cannot read it ({error})") from None
    pins, left_out = parse_freeze(text, str(path))
    return ColabPins(commit, date, python, pins, left_out)


def render(colab: ColabPins) -> str:
    """The text of requirements/colab.txt."""
    header = [
        "# The package versions of Colab's GPU runtime, as published in",
        f"# {SOURCE_REPOSITORY} ({FREEZE_FILE} and {OS_INFO_FILE}).",
        f"# backend-info commit: {colab.commit} ({colab.date})",
        f"# Python: {colab.python}",
        f"# Left out (installed from URLs): {', '.join(colab.left_out) or 'none'}",
        "# Written by tools/refresh_colab_pins.py: run it to refresh this file, never edit it.",
        "# The Colab-stack tier (.ci/colab-stack) installs with this file as pip constraints,",
        "# with this machine's CPU torch in place of Colab's CUDA build;",
        "# tests/repository/test_dependency_bounds.py checks pyproject.toml's lower bounds",
        "# against it.",
    ]
    return "\n".join(header + [f"{name}=={version}" for name, version in colab.pins.items()]) + "\n"


def parse_pins(text: str, where: str = str(OUTPUT)) -> ColabPins:
    """Read a file `render` wrote back (the tests and the tier use this)."""
    commit = date = python = None
    left_out: list[str] = []
    pins: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if match := HEADER_COMMIT.match(line):
            commit, date = match[1], match[2]
        elif match := HEADER_PYTHON.match(line):
            python = match[1]
        elif match := HEADER_LEFT_OUT.match(line):
            left_out = [] if match[1] == "none" else match[1].split(", ")
        elif line.startswith("#") or not line.strip():
            continue
        elif match := PIN.match(line):
            pins[match[1]] = match[2]
        else:
            raise PinsError(f"{where} line {number}: {line[:80]!r} is not name==version")
    if commit is None or python is None:
        raise PinsError(f"{where} lacks its header (backend-info commit, Python): rewrite it with "
                        "tools/refresh_colab_pins.py")
    return ColabPins(commit, date, python, pins, left_out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mirror", type=Path, help=f"a git clone of {SOURCE_REPOSITORY}")
    source.add_argument("--freeze", type=Path, help=f"a downloaded {FREEZE_FILE}")
    parser.add_argument("--commit", help="with --mirror: which commit (default HEAD); with "
                        "--freeze: the commit the file comes from (required)")
    parser.add_argument("--date", help="with --freeze: the commit's date, YYYY-MM-DD")
    parser.add_argument("--python", help=f"with --freeze: Colab's Python ({OS_INFO_FILE})")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="default: %(default)s")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the output file differs")
    args = parser.parse_args(argv)
    try:
        if args.mirror is not None:
            colab = from_mirror(args.mirror, args.commit or "HEAD")
        else:
            colab = from_freeze(args.freeze, args.commit or "", args.date, args.python)
        text = render(colab)
        try:
            current = args.output.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        except (OSError, UnicodeDecodeError) as error:
            raise PinsError(f"--output {args.output}: cannot read it ({error})") from None
        if args.check:
            if current != text:
                print(f"{args.output} is not Colab's list at {colab.commit[:12]}: run "
                      "tools/refresh_colab_pins.py without --check", file=sys.stderr)
                return 1
            print(f"{args.output} is up to date ({colab.commit[:12]}, {colab.date})")
            return 0
        if current != text:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            partial = args.output.with_name(args.output.name + ".partial")
            partial.write_text(text, encoding="utf-8")
            partial.replace(args.output)  # atomic: a crash leaves the old file or the new
    except PinsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.output}: {len(colab.pins)} pins from backend-info {colab.commit[:12]} "
          f"({colab.date}, Python {colab.python}); left out {len(colab.left_out)} URL installs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

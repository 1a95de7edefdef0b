"""Build the rendered course: every notebook executed, as static HTML pages with their figures.

    python tools/render_course.py                      # cpu profile, into site/
    python tools/render_course.py --profile smoke      # seconds per notebook (tests, CI)
    python tools/render_course.py --only 01 03 --out /tmp/site
    python tools/render_course.py --keep-notebooks     # also the executed .ipynb files

Each notebook runs top to bottom in a fresh kernel (nbclient) with HOURGLASS_EDU_PROFILE set, in
course order and in one shared scratch folder, as a learner would run them: where a notebook needs
a trained model it loads a shipped one (the notebooks' default). The executed notebook becomes
`OUT/NN_name.html` (nbconvert's JupyterLab template, every image embedded, so a page is one
file), and `OUT/index.html` links the pages in order under their titles, then the docs/ reference
pages (on GitHub, which renders their Markdown). The committed notebooks
are never modified. A notebook that fails still gets its page, showing the error, and the command
exits with status 1 after building the rest, so a broken course is never published silently.

Needs the `docs` extra (`pip install -e ".[docs]"`: nbconvert, nbclient, ipykernel). The kernel
imports the library from this checkout. This is a maintainer's tool, not part of the package: the
notebooks live in the repository, not in an installed wheel.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
DOCS_DIR = REPO_ROOT / "docs"
#: The reference pages are read on GitHub, which renders Markdown; the site holds only notebooks.
DOCS_URL = "https://github.com/hourglass-edu/hourglass_edu/blob/main/docs/"
DOCS_LINK = re.compile(r"^\|\s*\[[^\]]+\]\(([\w-]+\.md)\)", re.MULTILINE)
PROFILES = ("smoke", "cpu", "gpu")  # hourglass_edu.course.PROFILES; kept literal so --help works
#: Generous: the cpu profile promises at most 10 minutes per notebook on a 2-core CPU.
DEFAULT_TIMEOUT_S = 1800
HEADING = re.compile(r"^#\s+(.+?)\s*$", re.MULTILINE)


def course_notebooks(only: list[str] | None = None) -> list[Path]:
    """The course notebooks in order; `only`: keep those whose name starts with one of these."""
    notebooks = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        notebooks = [path for path in notebooks if path.name.startswith(tuple(only))]
        if not notebooks:
            raise ValueError(f"no notebook in {NOTEBOOK_DIR} starts with any of {only}")
    return notebooks


def notebook_title(notebook) -> str:
    """The first level-1 heading of the notebook's first markdown cell (its `# NN · Title`)."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            match = HEADING.search(cell.source)
            if match:
                return match.group(1)
    return "untitled"


def kernel_environment(profile: str) -> dict[str, str]:
    """The environment the notebooks' kernels run in: this one, set for `profile`."""
    env = dict(os.environ)
    env["HOURGLASS_EDU_PROFILE"] = profile
    env.pop("HOURGLASS_EDU_SMOKE", None)  # the profile decides, not a leftover flag
    env.pop("MPLBACKEND", None)  # the notebooks draw inline; a CI's Agg would show nothing
    # The kernel imports the library from this checkout, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def execute(notebook, workdir: Path, env: dict[str, str], timeout_s: int) -> str | None:
    """Run every cell in a fresh kernel, outputs kept in `notebook`; the error text, or None."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    client = NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute(env=env)
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def to_html(notebook, title: str) -> str:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", embed_images=True)
    body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": title}})
    return body


def reference_pages() -> list[tuple[str, str]]:
    """(URL, title) of each docs/ page, in the order docs/index.md's table lists them."""
    index = DOCS_DIR / "index.md"
    names = DOCS_LINK.findall(index.read_text(encoding="utf-8")) if index.is_file() else []
    found = []
    for name in ["index.md", *names]:
        path = DOCS_DIR / name
        if path.is_file():
            heading = HEADING.search(path.read_text(encoding="utf-8"))
            found.append((DOCS_URL + name, heading.group(1) if heading else name))
    return found


def index_page(pages: list[tuple[str, str, str | None]], profile: str) -> str:
    """`pages`: (file name, title, error or None), in course order."""
    reference = "\n".join(f'<li><a href="{html.escape(url)}">{html.escape(title)}</a></li>'
                          for url, title in reference_pages())
    items = "\n".join(
        f'<li><a href="{html.escape(name)}">{html.escape(title)}</a>'
        + (' <strong class="failed">(failed to run: see the page)</strong>' if error else "")
        + "</li>"
        for name, title, error in pages)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>hourglass_edu: the course, rendered</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.5; }}
li {{ margin: 0.3rem 0; }}
.failed {{ color: #b00; }}
</style>
</head>
<body>
<h1>hourglass_edu: the course, rendered</h1>
<p>A notebook course that builds a character-level Hourglass transformer (Nawrot et al. 2021)
from scratch. Each page is one notebook, executed top to bottom in the <code>{profile}</code>
profile, with its outputs and figures. To run a notebook yourself, open it from the
<a href="https://github.com/hourglass-edu/hourglass_edu">repository</a> in Jupyter or on
Colab.</p>
<ul class="course">
{items}
</ul>
<h2>Reference</h2>
<p>The library's commands, training, API, related designs and benchmarks, on GitHub:</p>
<ul class="reference">
{reference}
</ul>
</body>
</html>
"""


def render(notebooks: list[Path], out: Path, profile: str, timeout_s: int,
           keep_notebooks: bool = False) -> list[str]:
    """Execute and convert `notebooks` into `out`; returns the names of those that failed.
    `keep_notebooks`: also write each executed notebook (`OUT/NN_name.ipynb`, for reviewers)."""
    import nbformat

    out.mkdir(parents=True, exist_ok=True)
    env = kernel_environment(profile)
    pages, failed = [], []
    with tempfile.TemporaryDirectory(prefix="render-course-") as scratch:
        for path in notebooks:
            notebook = nbformat.read(path, as_version=4)
            title = notebook_title(notebook)
            start = time.perf_counter()
            error = execute(notebook, Path(scratch), env, timeout_s)
            seconds = time.perf_counter() - start
            page = path.with_suffix(".html").name
            (out / page).write_text(to_html(notebook, title), encoding="utf-8")
            if keep_notebooks:
                nbformat.write(notebook, out / path.name)
            pages.append((page, title, error))
            status = "FAILED" if error else "ok"
            print(f"{path.name}: {status} in {seconds:.0f} s -> {out / page}", flush=True)
            if error:
                failed.append(path.name)
                print(error[-2000:], file=sys.stderr)
    (out / "index.html").write_text(index_page(pages, profile), encoding="utf-8")
    print(f"index: {out / 'index.html'}")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILES, default="cpu",
                        help="the notebooks' settings profile (default: cpu)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "site",
                        help="output folder (default: site/, ignored by git)")
    parser.add_argument("--only", nargs="+", metavar="PREFIX",
                        help="only notebooks whose file name starts with one of these (e.g. 01 03)")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds one cell may run (default {DEFAULT_TIMEOUT_S})")
    parser.add_argument("--keep-notebooks", action="store_true",
                        help="also write each executed notebook beside its page (for reviewers)")
    args = parser.parse_args(argv)
    try:
        notebooks = course_notebooks(args.only)
    except ValueError as error:
        parser.error(str(error))
    failed = render(notebooks, args.out, args.profile, args.timeout, args.keep_notebooks)
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The documentation holds together: every relative link and image in README.md, CONTRIBUTING.md,
ARCHITECTURE.md and docs/*.md points at a file (and heading) that exists, docs/index.md lists
every docs page, and the rendered course's index links them all."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS = REPO_ROOT / "docs"
DOCUMENTS = [REPO_ROOT / name for name in ("README.md", "CONTRIBUTING.md", "ARCHITECTURE.md")]
DOCUMENTS += sorted(DOCS.glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {github_anchor(heading) for heading in HEADING.findall(path.read_text("utf-8"))}


def relative_links(path: Path) -> list[str]:
    return [target for target in LINK.findall(path.read_text(encoding="utf-8"))
            if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_point_at_files_and_headings_that_exist(document):
    broken = []
    for target in relative_links(document):
        file_part, _, anchor = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no such heading in {linked.name})")
    assert not broken, f"{document.name} links to: {broken}"


def test_the_anchor_rule_is_githubs():
    assert github_anchor("The model's training speed") == "the-models-training-speed"
    assert github_anchor("`train`, `finetune`, `evaluate`") == "train-finetune-evaluate"


def test_docs_index_lists_every_docs_page():
    listed = {target.partition("#")[0] for target in relative_links(DOCS / "index.md")}
    pages = {path.name for path in DOCS.glob("*.md")} - {"index.md"}
    assert pages <= listed, f"add to docs/index.md: {sorted(pages - listed)}"


def render_course():
    spec = importlib.util.spec_from_file_location("render_course",
                                                  REPO_ROOT / "tools" / "render_course.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_rendered_course_index_links_every_docs_page_under_its_title():
    tool = render_course()
    pages = tool.reference_pages()
    names = [url.rsplit("/", 1)[1] for url, _ in pages]
    assert set(names) == {path.name for path in DOCS.glob("*.md")}
    assert names[0] == "index.md"
    page = tool.index_page([("00_x.html", "00 · X", None)], "smoke")
    for url, title in pages:
        assert url.startswith(tool.DOCS_URL)
        assert title == HEADING.search((DOCS / url.rsplit("/", 1)[1]).read_text("utf-8"))[1]
        assert f'<a href="{url}">{title}</a>' in page.replace("&#x27;", "'")

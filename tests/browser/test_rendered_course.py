"""The rendered course in a real browser: the pages `tools/render_course.py` builds show their
text and figures, with no JavaScript error.

Two short notebooks are built in the smoke profile with the same command maintainers and the
GitHub Pages workflow run; the index and both pages are then opened from disk in headless
Chromium. Requests that leave the machine (the Colab badge, MathJax and require.js from their
CDNs) are answered inside the browser with empty content, as in the JupyterLab tests, so the
result does not depend on the network.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from jupyterlab_harness import EMPTY_SVG, EXTERNAL_URL, NOTEBOOK_DIR, REPO_ROOT

pytestmark = pytest.mark.browser

#: Short notebooks (no training in smoke mode) that draw figures, one of them with math.
RENDERED = ("04", "05")
BUILD_TIMEOUT_S = 400
#: A figure smaller than this (decoded, in pixels) is not a real plot.
MIN_FIGURE_WIDTH, MIN_FIGURE_HEIGHT = 100, 50


def notebook_for(prefix: str):
    return next(NOTEBOOK_DIR.glob(f"{prefix}_*.ipynb"))


def headings(prefix: str) -> tuple[str, list[str]]:
    """The notebook's title (first `# ` heading) and its `## ` section headings, as plain text."""
    cells = json.loads(notebook_for(prefix).read_text(encoding="utf-8"))["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    plain = lambda heading: re.sub(r"[`*]", "", heading).strip()  # noqa: E731
    title = plain(re.search(r"^# (.+)$", text, re.MULTILINE).group(1))
    return title, [plain(h) for h in re.findall(r"^## (.+)$", text, re.MULTILINE)]


@pytest.fixture(scope="module")
def rendered_site(chromium, tmp_path_factory):
    """The site for RENDERED, built by the command (after `chromium`: no browser, no build)."""
    out = tmp_path_factory.mktemp("site")
    command = [sys.executable, str(REPO_ROOT / "tools" / "render_course.py"),
               "--profile", "smoke", "--only", *RENDERED, "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                            cwd=REPO_ROOT)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n" + (
        result.stderr[-4000:])
    return out


@pytest.fixture
def open_page(browser_context):
    """open_page(url) -> (page, problems): console errors and page errors, as they come."""
    pages = []

    def answer_offline(route):
        if route.request.resource_type == "script":
            route.fulfill(status=200, content_type="text/javascript", body="")
        else:
            route.fulfill(status=200, content_type="image/svg+xml", body=EMPTY_SVG)

    def opener(url: str):
        page = browser_context.new_page()
        pages.append(page)
        problems: list[str] = []
        page.on("console", lambda message: problems.append(
            f"console {message.type}: {message.text}") if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.route(EXTERNAL_URL, answer_offline)
        page.goto(url, wait_until="load")
        return page, problems

    yield opener
    for page in pages:
        page.close()


def test_index_links_every_page_in_order_under_its_title(rendered_site, open_page):
    page, problems = open_page((rendered_site / "index.html").as_uri())
    links = page.locator("ul.course a")
    expected = [(notebook_for(prefix).with_suffix(".html").name, headings(prefix)[0])
                for prefix in RENDERED]
    found = [(links.nth(i).get_attribute("href"), links.nth(i).inner_text())
             for i in range(links.count())]
    assert found == expected
    for href, _ in found:
        assert (rendered_site / href).is_file(), f"index links {href}, which was not built"
    assert problems == []


@pytest.mark.parametrize("prefix", RENDERED)
def test_page_shows_the_notebooks_text_outputs_and_figures(rendered_site, open_page, prefix):
    page, problems = open_page((rendered_site / notebook_for(prefix).with_suffix(".html").name)
                               .as_uri())
    title, sections = headings(prefix)
    assert page.title() == title
    shown = lambda selector: [text.replace("¶", "").strip()  # noqa: E731 - nbconvert's anchors
                              for text in page.locator(selector).all_inner_texts()]
    assert shown("h1")[0] == title
    assert sections and set(sections) <= set(shown("h2")), (sections, shown("h2"))
    printed = [text for text in shown(".jp-OutputArea-output pre") if text]
    assert printed, "no printed output: were the cells executed?"

    figures = page.locator('img[src^="data:image/png"]')
    assert figures.count() >= 1, "no figure on the page"
    sizes = figures.evaluate_all(
        "images => images.map(img => [img.complete, img.naturalWidth, img.naturalHeight])")
    for index, (complete, width, height) in enumerate(sizes):
        assert complete and width >= MIN_FIGURE_WIDTH and height >= MIN_FIGURE_HEIGHT, (
            f"figure {index} decodes to {width}x{height} pixels")
    assert problems == []

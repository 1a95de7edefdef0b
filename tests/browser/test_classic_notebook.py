"""The widget apps on Colab's widget stack, in a real browser: the classic Notebook 6.5.7 with
ipywidgets 7.7.1 (the front end Colab's own widget manager follows), in headless Chromium.

Two notebooks, each a tiny random model and one app, run through Cell > Run All with no error
output, traceback, widget that failed to render or console error; then, as a learner would, the
generation demo streams text after a click on Generate and stops on Stop (its sliders show their
hover text), and the attention explorer draws another picture for another head. The checks are
the JupyterLab tests' own (test_browser_course.py), on the other front end. The course notebooks
that show these apps (07, 08) run on the same stack through nbclient in the same tier; a tiny
model keeps this browser run short.

These run in the Colab-stack tier (.ci/colab-stack), whose virtualenv holds Colab's versions;
elsewhere (no Notebook 6, or ipywidgets 8) they skip, saying so.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil

import pytest
from classic_notebook_harness import ClassicNotebookPage, ClassicNotebookServer
from jupyterlab_harness import REPO_ROOT, attach_page
from widget_checks import (
    assert_clean,
    check_generation_streams_and_stops,
    check_head_changes_the_picture,
    write_widget_notebook,
)

pytestmark = pytest.mark.browser

IN_THE_TIER = os.environ.get("HOURGLASS_EDU_COLAB_STACK") == "1"
#: The two notebooks: name -> the app's cell. Without the cache every character recomputes the
#: window: slow enough to watch the text stream.
GENERATION = "classic_generation.ipynb"
EXPLORER = "classic_attention.ipynb"
APPS = {
    GENERATION: "widgets.generation_demo(model, tokenizer, max_length=100_000, use_cache=False)",
    EXPLORER: "widgets.attention_explorer(model, tokenizer, 'the old pond, a frog jumps in')",
}
RUN_TIMEOUT_S = 180


def _major(distribution: str) -> int | None:
    try:
        return int(importlib.metadata.version(distribution).split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return None


CLASSIC_STACK = _major("notebook") == 6 and _major("ipywidgets") == 7


@pytest.fixture(scope="module")
def classic_pages(chromium, browser_context, artifact_dir, tmp_path_factory):
    """A classic Notebook server with both notebooks opened and running, at once."""
    if not CLASSIC_STACK:
        message = (f"needs the classic Notebook 6 with ipywidgets 7 (found notebook "
                   f"{_major('notebook')}, ipywidgets {_major('ipywidgets')})")
        if IN_THE_TIER:
            pytest.fail(message + ": the Colab-stack tier must provide them")
        pytest.skip(message + ": runs in the Colab-stack tier (.ci/colab-stack)")
    root = tmp_path_factory.mktemp("classic-root")
    for name, app in APPS.items():
        write_widget_notebook(root, name, app)
    env = dict(os.environ)
    env["HOURGLASS_EDU_SMOKE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("MPLBACKEND", None)  # figures inline, as a learner sees them
    server = ClassicNotebookServer(root, tmp_path_factory.mktemp("classic-state"), env)
    server.start()
    pages: dict[str, ClassicNotebookPage] = {}
    try:
        for name in APPS:
            pages[name] = ClassicNotebookPage.open(browser_context, server, name)
            pages[name].start_run_all()
        yield pages
    finally:
        try:
            for page in pages.values():
                page.close()
            server.stop()
        finally:
            if server.log_path.exists():
                shutil.copy2(server.log_path, artifact_dir / "classic-notebook.log")


def ran(request, classic_pages, name: str):
    page = classic_pages[name]
    attach_page(request, page)
    state = page.wait_run_all(timeout_s=RUN_TIMEOUT_S)
    print(f"{name}: ran in {page.run_seconds:.1f} s in the classic Notebook")
    assert_clean(page, state)
    return page


def check_sliders_show_their_hover_text(page) -> None:
    """ipywidgets 7 shows `description_tooltip` as the label's title (8 calls it `tooltip`)."""
    label = page.page.locator(".hg-generation-demo .hg-temperature .widget-label").first
    assert label.get_attribute("title") == "0 = always the most likely character"


@pytest.mark.timeout(RUN_TIMEOUT_S + 180)
def test_generation_demo_streams_and_stops_in_the_classic_notebook(request, classic_pages):
    page = ran(request, classic_pages, GENERATION)
    check_sliders_show_their_hover_text(page)
    check_generation_streams_and_stops(page, prompt="the old ")
    assert page.problems() == []


@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
def test_attention_explorer_changes_with_the_head_in_the_classic_notebook(request, classic_pages):
    page = ran(request, classic_pages, EXPLORER)
    check_head_changes_the_picture(page)
    assert page.problems() == []

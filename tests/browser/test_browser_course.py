"""The course in a real browser: every notebook runs in JupyterLab, and the widget apps work there.

- Every notebook in notebooks/ runs to the end through Run > Run All Cells, in smoke mode, with no
  error output, no traceback on stderr, no widget that failed to render and no JavaScript error.
- The generation demo streams text into the page while it runs and Stop ends it; the attention
  explorer shows a different picture for a different head. Both are checked twice: in the
  course notebooks that show them (07, 08) and on a tiny random model in a notebook written here,
  which pins the widget behaviour down independently of how the course uses it.

Notebooks 07 and 08 run once: the every-notebook test and the widget test share one page (the
widget test comes second, so its interactions are checked by the console check too if it fails).
"""

from __future__ import annotations

import os

import pytest
from jupyterlab_harness import NOTEBOOK_DIR, NotebookPage, attach_page
from widget_checks import (
    assert_clean,
    check_generation_streams_and_stops,
    check_head_changes_the_picture,
    write_widget_notebook,
)

pytestmark = pytest.mark.browser

NOTEBOOKS = sorted(path.name for path in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
GENERATION_NOTEBOOK = "07_generation.ipynb"
EXPLORER_NOTEBOOK = "08_inside_the_hourglass.ipynb"
#: The widget tests and the course notebook each one drives.
WIDGET_TEST_NOTEBOOKS = {
    "test_generation_demo_in_notebook_07_streams_and_stops": GENERATION_NOTEBOOK,
    "test_attention_explorer_in_notebook_08_changes_with_the_head": EXPLORER_NOTEBOOK,
}
#: Pages kept open after their run, for the widget tests that follow.
KEEP_OPEN = set(WIDGET_TEST_NOTEBOOKS.values())
#: Smoke mode promises < 2 min per notebook; the page, the widgets' drawing and the notebook run
#: beside it add some.
RUN_TIMEOUT_S = 300
#: Notebooks running at once (each in its own page and kernel). Smoke-mode notebooks train for a
#: fixed wall time on one thread, so two at a time use CI's two cores and halve the waiting.
PARALLEL = int(os.environ.get("HOURGLASS_EDU_BROWSER_PARALLEL", "2"))


class CoursePages:
    """Runs each course notebook once per session, up to `parallel` at a time, in test order.

    `run(name)` starts that notebook and the next ones the session will ask for (as many as
    `parallel` allows), then waits for `name`. Pages that later tests inspect stay open.
    """

    def __init__(self, context, server, order: list[str], parallel: int):
        self.context, self.server = context, server
        self.order, self.parallel = order, max(1, parallel)
        self.pages: dict[str, NotebookPage] = {}
        self.states: dict[str, dict] = {}

    def _start(self, name: str) -> None:
        if name not in self.pages:
            page = NotebookPage.open(self.context, self.server, name)
            self.pages[name] = page
            page.start_run_all()

    def _in_flight(self) -> int:
        return sum(name not in self.states for name in self.pages)

    def run(self, name: str) -> tuple[NotebookPage, dict]:
        self._start(name)
        upcoming = self.order[self.order.index(name) + 1 :] if name in self.order else []
        for later in upcoming:
            if self._in_flight() >= self.parallel:
                break
            try:
                self._start(later)
            except Exception:  # noqa: BLE001 - not this test's failure: its own test retries it
                self.pages.pop(later, None)
        if name not in self.states:
            page = self.pages[name]
            self.states[name] = page.wait_run_all(timeout_s=RUN_TIMEOUT_S)
            print(f"{name}: ran in {page.run_seconds:.1f} s in the page")
        return self.pages[name], self.states[name]

    def release(self, name: str) -> None:
        self.states.pop(name, None)
        if name in self.pages:
            self.pages.pop(name).close()

    def close(self) -> None:
        for name in list(self.pages):
            self.release(name)


def notebooks_in_test_order(session) -> list[str]:
    """The course notebooks the selected tests will run, in the order they will ask for them."""
    order = []
    for item in session.items:
        if item.module is None or item.module.__name__ != __name__:
            continue
        params = getattr(item, "callspec", None)
        name = params.params.get("name") if params else None
        name = name or WIDGET_TEST_NOTEBOOKS.get(item.originalname)
        if name and name not in order and (NOTEBOOK_DIR / name).is_file():
            order.append(name)
    return order


@pytest.fixture(scope="session")
def course_pages(request, browser_context, lab_server):
    pages = CoursePages(
        browser_context, lab_server, notebooks_in_test_order(request.session), PARALLEL
    )
    yield pages
    pages.close()


@pytest.fixture
def course_notebook(request, course_pages):
    """course_notebook(name) -> (page, state) after Run All; the failure report shows the page."""
    used = []

    def run(name: str):
        if not (NOTEBOOK_DIR / name).is_file():
            message = f"notebooks/{name} not found; the browser widget test needs it"
            if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
                pytest.fail(message + " (CI=true: a missing course notebook is a failure)")
            pytest.skip(message)
        used.append(name)
        try:
            return course_pages.run(name)
        finally:
            if name in course_pages.pages:
                attach_page(request, course_pages.pages[name])

    yield run
    for name in used:
        if name not in KEEP_OPEN:
            course_pages.release(name)


# --- every notebook ------------------------------------------------------------------------------


def test_course_has_notebooks_to_run_in_the_browser():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_clean_in_the_page(name, course_notebook):
    page, state = course_notebook(name)
    assert_clean(page, state)


# --- the widgets, driven as a learner would ------------------------------------------------------


@pytest.mark.timeout(RUN_TIMEOUT_S + 180)
def test_generation_demo_in_notebook_07_streams_and_stops(course_notebook):
    page, state = course_notebook(GENERATION_NOTEBOOK)
    assert_clean(page, state)
    check_generation_streams_and_stops(page, prompt="the ")
    assert page.problems() == []


@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
def test_attention_explorer_in_notebook_08_changes_with_the_head(course_notebook):
    page, state = course_notebook(EXPLORER_NOTEBOOK)
    assert_clean(page, state)
    check_head_changes_the_picture(page)
    assert page.problems() == []


# --- the same widgets on a tiny random model (independent of the course notebooks) --------------

@pytest.mark.timeout(240)
def test_generation_demo_streams_and_stops_on_a_tiny_model(lab_root, open_notebook):
    # Without the cache every character recomputes the window: slow enough to watch it stream.
    name = write_widget_notebook(
        lab_root, "widget_generation.ipynb",
        "widgets.generation_demo(model, tokenizer, max_length=100_000, use_cache=False)",
    )  # fmt: skip
    page = open_notebook(name)
    assert_clean(page, page.run_all(timeout_s=120))
    check_generation_streams_and_stops(page, prompt="the old ")
    assert page.problems() == []


@pytest.mark.timeout(240)
def test_attention_explorer_changes_with_the_head_on_a_tiny_model(lab_root, open_notebook):
    name = write_widget_notebook(
        lab_root, "widget_attention.ipynb",
        "widgets.attention_explorer(model, tokenizer, 'the old pond, a frog jumps in')",
    )  # fmt: skip
    page = open_notebook(name)
    assert_clean(page, page.run_all(timeout_s=120))
    check_head_changes_the_picture(page)
    assert page.problems() == []

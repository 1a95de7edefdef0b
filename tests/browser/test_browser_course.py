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

import base64
import os
import time

import nbformat
import pytest
from jupyterlab_harness import NOTEBOOK_DIR, NotebookPage, attach_page

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


def assert_clean(page: NotebookPage, state: dict) -> None:
    problems = page.problems(state)
    assert not problems, f"{page.notebook_path} in the browser:\n" + "\n".join(problems)
    code_cells = [c for c in state["cells"] if c["source"].strip()]
    assert all(c["executionCount"] is not None for c in code_cells)


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


def output_text(demo) -> str:
    return demo.locator(".hg-output textarea").evaluate("element => element.value")


def check_generation_streams_and_stops(page: NotebookPage, prompt: str) -> None:
    """Type a prompt, turn off stop-at-end, ask for the longest text, Generate, watch, Stop."""
    demos = page.page.locator(".hg-generation-demo")
    assert demos.count() >= 1, "no generation demo (.hg-generation-demo) on the page"
    demo = demos.first
    demo.scroll_into_view_if_needed()
    assert demo.is_visible()
    generate, stop = demo.locator("button.hg-generate"), demo.locator("button.hg-stop")
    status = demo.locator(".hg-status")
    assert generate.is_enabled() and stop.is_disabled()

    demo.locator(".hg-prompt textarea").fill(prompt)
    stop_at_end = demo.locator(".hg-stop-at-end input[type=checkbox]")
    if stop_at_end.is_checked():
        stop_at_end.uncheck()  # a model that ends its text early would end the stream early
    length = demo.locator(".hg-length .widget-readout")
    length.fill("100000000")  # clamped to the slider's maximum: the longest run the app allows
    length.press("Enter")
    page.page.wait_for_timeout(300)  # let the new values reach the kernel before the click

    status_before = status.inner_text()
    text_before = output_text(demo)
    generate.click()
    # The click reaches the kernel asynchronously: until it answers, the page still shows the
    # previous run's text and status (a notebook may have run the demo already: "done: ...").
    page.page.wait_for_function(
        "([demo, status, text]) => demo.querySelector('.hg-status').innerText !== status"
        " || demo.querySelector('.hg-output textarea').value !== text",
        arg=[demo.element_handle(), status_before, text_before],
        timeout=30_000,
    )
    # One round trip per look (text length and status together): a fast model on a quiet machine
    # writes the longest text the slider allows in a second or two, and Stop must come before.
    look = """(demo) => [demo.querySelector('.hg-output textarea').value.length,
                      demo.querySelector('.hg-status').innerText]"""
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        length_now, status_now = demo.evaluate(look)
        if not seen or length_now != seen[-1]:
            seen.append(length_now)
        growing_steps = sum(n > len(prompt) for n in seen)
        if growing_steps >= 3 or status_now.startswith(("done", "stopped")):
            break
        page.page.wait_for_timeout(30)
    assert output_text(demo).startswith(prompt), "the output must begin with the prompt"
    growing = [n for n in seen if n > len(prompt)]
    assert len(growing) >= 3 and growing == sorted(growing), (
        f"the text should grow step by step while generating; lengths seen: {seen}, "
        f"status: {status.inner_text()!r}"
    )
    assert status.inner_text().startswith("generating"), (
        f"generation ended before Stop could be tested ({status.inner_text()!r}): "
        "the longest text the demo allows is too short for this model's speed"
    )
    assert stop.is_enabled() and generate.is_disabled()
    print(f"{page.notebook_path}: Stop pressed at {status.inner_text()!r}; lengths seen {seen}")

    stop.click()
    status.get_by_text("stopped").wait_for(timeout=30_000)
    stopped_at = output_text(demo)
    page.page.wait_for_timeout(1000)
    assert output_text(demo) == stopped_at, "the text kept growing after Stop"
    assert len(stopped_at) > len(prompt)
    assert generate.is_enabled() and stop.is_disabled()


def image_bytes(image) -> bytes:
    """The PNG an <img> shows (ipywidgets hands it a blob: URL), fetched inside the page."""
    encoded = image.evaluate(
        """async (img) => {
             if (!img.complete || img.naturalWidth === 0) throw new Error('image not loaded');
             const buffer = await (await fetch(img.src)).arrayBuffer();
             let binary = '';
             new Uint8Array(buffer).forEach((byte) => { binary += String.fromCharCode(byte); });
             return btoa(binary);
           }"""
    )
    return base64.b64decode(encoded)


def wait_for_new_image(page: NotebookPage, image, old_src: str) -> bytes:
    page.page.wait_for_function(
        "([img, old]) => img.src !== old && img.complete && img.naturalWidth > 0",
        arg=[image.element_handle(), old_src],
        timeout=30_000,
    )
    return image_bytes(image)


def check_head_changes_the_picture(page: NotebookPage) -> None:
    explorers = page.page.locator(".hg-attention-explorer")
    assert explorers.count() >= 1, "no attention explorer (.hg-attention-explorer) on the page"
    explorer = explorers.first
    explorer.scroll_into_view_if_needed()
    image = explorer.locator("img.hg-image")
    image.wait_for(state="visible", timeout=30_000)
    head = explorer.locator(".hg-head select")
    options = head.locator("option").all_inner_texts()
    assert len(options) >= 2, f"the head selector offers {options}"
    first_choice = head.input_value()
    first = image_bytes(image)
    assert first.startswith(b"\x89PNG"), "the explorer's image is not a PNG"

    src = image.get_attribute("src")
    head.select_option(index=1)
    second = wait_for_new_image(page, image, src)
    assert second != first, f"head {options[1]!r} shows the same picture as head {first_choice!r}"

    src = image.get_attribute("src")
    head.select_option(value=first_choice)
    again = wait_for_new_image(page, image, src)
    assert again == first, "going back to the first head should redraw the first picture"


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

TINY_MODEL_CELL = """\
import torch
from hourglass_edu import CharTokenizer, HourglassConfig, HourglassLM, widgets

torch.manual_seed(0)
tokenizer = CharTokenizer.from_documents(["the old pond, a frog jumps in: splash! 0123456789"])
model = HourglassLM(HourglassConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_heads=2,
                                    structure="1@1 1@2 1@1", max_length=64,
                                    attention_impl="explicit"))
"""


def write_widget_notebook(folder, name: str, widget_source: str) -> str:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    notebook.cells = [
        nbformat.v4.new_code_cell(TINY_MODEL_CELL),
        nbformat.v4.new_code_cell(widget_source),
    ]
    nbformat.write(notebook, folder / name)
    return name


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

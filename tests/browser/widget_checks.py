"""The widget checks the browser tests share (tests/browser/test_browser_course.py in JupyterLab,
tests/browser/test_classic_notebook.py in the classic Notebook): a page ran clean, the generation
demo streams and stops, the attention explorer redraws for another head, and a notebook of one
widget on a tiny random model."""

from __future__ import annotations

import base64
import time

import nbformat
from jupyterlab_harness import NotebookPage


def assert_clean(page: NotebookPage, state: dict) -> None:
    problems = page.problems(state)
    assert not problems, f"{page.notebook_path} in the browser:\n" + "\n".join(problems)
    code_cells = [c for c in state["cells"] if c["source"].strip()]
    assert all(c["executionCount"] is not None for c in code_cells)


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

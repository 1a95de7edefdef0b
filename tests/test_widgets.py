"""Widget apps driven the way a learner drives them: set `.value`, call `.click()`.

They run twice in CI: here with ipywidgets 8, and in the Colab-stack tier (.ci/colab-stack) with
Colab's ipywidgets 7.7.1. Both majors drop a keyword that names no trait with only traitlets'
DeprecationWarning ("Passing unrecognized arguments ..."), so a trait of one major given to the
other would pass silently: `pytestmark` turns that warning into a failure.
"""

from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")

import ipywidgets  # noqa: E402
import pytest  # noqa: E402
from tiny import tiny_hourglass  # noqa: E402

from hourglass_edu import CharTokenizer, widgets  # noqa: E402
from hourglass_edu.generation import GenerationSettings, generate  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "error:Passing unrecognized arguments:DeprecationWarning")

TEXT = "old pond\na frog"


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer.from_documents(["the old pond\na frog jumps in, splash! THE END."])


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_hourglass(tokenizer.vocab_size, structure="1@1 1@3 1@1", attention_impl="explicit")


def wait_until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_generate_button_streams_text_into_the_output(model, tokenizer):
    demo = widgets.generation_demo(model, tokenizer, prompt="the old")
    demo.length.value = 12
    demo.seed.value = 3
    demo.stop_at_end.value = False
    demo.temperature.value = 1.5
    demo.top_k.value = 3
    assert demo.settings() == GenerationSettings(temperature=1.5, top_k=3, seed=3,
                                                 stop_at_end=False)  # fmt: skip
    demo.generate_button.click()
    assert demo.wait(timeout=30)
    expected = generate(model, tokenizer, "the old", 12, temperature=1.5, top_k=3, seed=3,
                        stop_at_end=False)  # fmt: skip
    assert demo.output.value == "the old" + expected
    assert demo.status.value.startswith("done: 12 characters")
    assert not demo.generate_button.disabled and demo.stop_button.disabled


def test_stop_ends_a_long_generation_promptly(model, tokenizer):
    demo = widgets.generation_demo(model, tokenizer, max_length=100_000)
    demo.length.value = 100_000
    demo.stop_at_end.value = False
    demo.generate_button.click()
    assert demo.running
    assert not demo.stop_button.disabled and demo.generate_button.disabled
    demo.generate_button.click()  # a second click while running starts nothing new
    assert wait_until(lambda: len(demo.output.value) >= 5), "no text streamed"
    demo.stop_button.click()
    assert demo.wait(timeout=5), "generation did not stop within 5 s"
    produced = len(demo.output.value)
    assert 5 <= produced < 100_000
    assert demo.status.value.startswith("stopped")
    assert not demo.generate_button.disabled


def test_generation_errors_show_in_the_status_line(model, tokenizer):
    demo = widgets.generation_demo(model, tokenizer, prompt="ÿ")
    demo.generate_button.click()
    assert not demo.running
    assert "vocabulary lacks" in demo.status.value
    assert demo.output.value == ""


def test_controls_carry_css_classes_for_browser_tests(model, tokenizer):
    demo = widgets.generation_demo(model, tokenizer)
    assert "hg-generate" in demo.generate_button._dom_classes
    assert "hg-stop" in demo.stop_button._dom_classes
    assert "hg-output" in demo.output._dom_classes
    assert "hg-prompt" in demo.prompt._dom_classes
    assert "hg-generation-demo" in demo._dom_classes


def test_sliders_carry_their_hover_text_in_the_trait_this_ipywidgets_shows(model, tokenizer):
    demo = widgets.generation_demo(model, tokenizer)
    trait = widgets.hover_text_trait()
    major = int(ipywidgets.__version__.split(".")[0])
    assert trait == ("tooltip" if major >= 8 else "description_tooltip")
    hover = {name: getattr(getattr(demo, name), trait)
             for name in ("temperature", "top_k", "top_p")}
    assert hover == {"temperature": "0 = always the most likely character",
                     "top_k": "keep the k most likely characters (0 = all)",
                     "top_p": "nucleus sampling (1 = off)"}


def test_attention_explorer_follows_head_level_and_text(model, tokenizer):
    explorer = widgets.attention_explorer(model, tokenizer, TEXT)
    assert "hg-attention-explorer" in explorer._dom_classes
    assert "hg-head" in explorer.head._dom_classes and "hg-image" in explorer.image._dom_classes
    assert explorer.level.options == (0, 1)
    assert explorer.block.options == (0, 1)
    assert explorer.head.options == (0, 1, "mean")
    first = explorer.image.value
    assert first[:4] == b"\x89PNG"
    explorer.head.value = 1
    assert explorer.image.value != first
    by_head = explorer.image.value
    explorer.level.value = 1
    assert explorer.block.options == (0,)  # the innermost level has only one block
    assert explorer.image.value != by_head
    by_level = explorer.image.value
    explorer.text.value = "ÿ"  # bad text: a message, the picture stays
    assert "lacks" in explorer.status.value
    assert explorer.image.value == by_level
    explorer.text.value = "a frog"
    assert explorer.status.value == ""
    assert explorer.inspection.text == "a frog"
    assert explorer.image.value != by_level


def test_activation_explorer_shows_the_chosen_level_and_point(model, tokenizer):
    explorer = widgets.activation_explorer(model, tokenizer, TEXT)
    assert explorer.point.options == ("input", "block0", "block1", "output")
    first = explorer.image.value
    explorer.level.value = 1
    assert explorer.point.options == ("input", "block0", "output")
    assert explorer.image.value != first
    level1 = explorer.image.value
    explorer.point.value = "input"
    assert explorer.image.value != level1


@pytest.mark.parametrize("seed, shown", [(2**70, "1180591620717411303424"), (-3, "-3")])
def test_a_seed_out_of_range_shows_the_range_in_the_status_line(model, tokenizer, seed, shown):
    demo = widgets.generation_demo(model, tokenizer, prompt="the")
    demo.seed.value = seed
    demo.generate_button.click()  # before: "Overflow when unpacking long long", a traceback
    assert not demo.running
    assert "seed must be a whole number from 0 to 2**63 - 1" in demo.status.value
    assert shown in demo.status.value and demo.output.value == ""


def test_an_empty_prompt_and_the_shortest_length_write_one_character(model, tokenizer):
    demo = widgets.generation_demo(model, tokenizer, prompt="")
    demo.length.value = 0  # the slider keeps its minimum, 1
    demo.stop_at_end.value = False
    demo.generate_button.click()
    assert demo.wait(timeout=30)
    assert demo.length.value == 1 and len(demo.output.value) == 1
    assert demo.status.value.startswith("done: 1 characters")


@pytest.mark.parametrize("options, message", [
    (dict(max_length=0), "max_length .* must be a whole number >= 1, got 0"),
    (dict(use_cache="no"), "use_cache must be True or False"),
])
def test_generation_demo_options_are_refused_in_one_line(model, tokenizer, options, message):
    with pytest.raises(ValueError, match=message):
        widgets.generation_demo(model, tokenizer, **options)

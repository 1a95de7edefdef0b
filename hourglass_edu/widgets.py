"""Small ipywidgets apps for the notebooks: generation demo, attention and activation explorers.

Each app is one call given a model and a tokenizer, and returns the top-level widget:

    generation_demo(model, tokenizer)           # prompt, sampling controls, Generate / Stop
    attention_explorer(model, tokenizer, text)  # text box, level / block / head -> heatmap
    activation_explorer(model, tokenizer, text) # text box, level / capture point -> activations

Only core widgets are used, with the traits ipywidgets 7.7 and 8 both have, so the apps work in
JupyterLab and Notebook 7 (ipywidgets 8) and in Colab and the classic Notebook 6 (Colab ships
ipywidgets 7.7.1). The one trait 8 renamed, a control's hover text (7: `description_tooltip`, 8:
`tooltip`), goes through `hover_text_trait()`: ipywidgets 7 drops an unknown keyword with only a
DeprecationWarning, so the other major's name would just lose the text.

Every control is an attribute of the returned widget (`demo.prompt`, `demo.generate_button`, ...)
so that code and tests can drive the app exactly as a learner would (set `.value`, call
`.click()`), and the key widgets carry CSS classes (`hg-generate`, `hg-stop`, `hg-output`, ...)
so a browser test can find them.

Generation runs in a background thread. The kernel therefore stays free to receive the Stop
click; the thread checks a stop flag after every character and sends the growing text to the
output widget a few times a second (ipywidgets may be updated from another thread).
"""

from __future__ import annotations

import threading
import time

import ipywidgets as widgets

from hourglass_edu import analysis, viz
from hourglass_edu.generation import GenerationSettings, stream
from hourglass_edu.loading import check_tokenizer_matches
from hourglass_edu.sampling import shown_number

__all__ = ["activation_explorer", "attention_explorer", "generation_demo"]

#: Resolution of the explorers' pictures: sharp on a laptop, quick to redraw.
WIDGET_DPI = 80

#: How often (seconds) the streaming thread sends the text to the browser.
STREAM_REFRESH_SECONDS = 0.05

#: The major version of the ipywidgets this kernel imported (7 on Colab, 8 in JupyterLab 4).
IPYWIDGETS_MAJOR = int(widgets.__version__.split(".")[0])


def hover_text_trait(major: int = IPYWIDGETS_MAJOR) -> str:
    """The trait that holds a control's hover text: `tooltip` in ipywidgets 8, `description_tooltip`
    in 7 (8 still accepts the old name, with a DeprecationWarning)."""
    return "tooltip" if major >= 8 else "description_tooltip"


def _hover(text: str) -> dict:
    """Keyword arguments that give a control the hover text `text` in this ipywidgets."""
    return {hover_text_trait(): text}


def _classed(widget, css_class: str):
    widget.add_class(css_class)
    return widget


def _error_html(message: str) -> str:
    escaped = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f"<span style='color:#D55E00'>{escaped}</span>"


def _check_app_options(*, max_length, use_cache) -> None:
    """The generation demo's own options, refused with a ValueError before a widget is made."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length (the Length slider's largest value) must be a whole "
                         f"number >= 1, got {shown_number(max_length)}")
    if not isinstance(use_cache, bool):
        raise ValueError(f"use_cache must be True or False, got {shown_number(use_cache)}")


class GenerationDemo(widgets.VBox):
    """Prompt box, sampling controls, Generate and Stop; the text streams into `output`.

    Attributes (the controls): `prompt`, `temperature`, `top_k` (0 = off), `top_p` (1 = off),
    `length` (new characters), `seed`, `stop_at_end`, `generate_button`, `stop_button`,
    `output` (a Textarea holding prompt + generated text), `status` (an HTML line).
    `settings()` is the `GenerationSettings` the controls show; `running` says whether a
    generation is under way; `wait(timeout)` blocks until it ends.
    """

    def __init__(
        self, model, tokenizer, prompt: str = "", *, max_length: int = 2000, use_cache: bool = True
    ):
        check_tokenizer_matches(model, tokenizer, "generation_demo")
        _check_app_options(max_length=max_length, use_cache=use_cache)
        self.model = model
        self.use_cache = use_cache
        self.tokenizer = tokenizer
        self._stop_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._make_controls(prompt, max_length)
        self.generate_button = _classed(
            widgets.Button(description="Generate", button_style="primary", icon="play"),
            "hg-generate",
        )
        self.stop_button = _classed(
            widgets.Button(description="Stop", button_style="warning", icon="stop", disabled=True),
            "hg-stop",
        )
        self.output = _classed(
            widgets.Textarea(value="", layout=widgets.Layout(width="100%", height="260px"),
                             disabled=True),
            "hg-output",
        )  # fmt: skip
        self.status = _classed(widgets.HTML(value="ready"), "hg-status")
        self.generate_button.on_click(self._on_generate)
        self.stop_button.on_click(self._on_stop)
        controls = widgets.HBox(
            [
                widgets.VBox([self.temperature, self.top_k, self.top_p]),
                widgets.VBox([self.length, self.seed, self.stop_at_end]),
            ]
        )
        buttons = widgets.HBox([self.generate_button, self.stop_button, self.status])
        super().__init__([self.prompt, controls, buttons, self.output],
                         layout=widgets.Layout(width="100%"))  # fmt: skip
        self.add_class("hg-generation-demo")

    def _make_controls(self, prompt: str, max_length: int) -> None:
        """The prompt box and the controls that `settings()` reads."""
        style = {"description_width": "90px"}
        self.prompt = _classed(
            widgets.Textarea(value=prompt, description="Prompt", placeholder="(empty: a new poem)",
                             layout=widgets.Layout(width="100%", height="60px"), style=style),
            "hg-prompt",
        )  # fmt: skip
        self.temperature = _classed(
            widgets.FloatSlider(value=0.8, min=0.0, max=2.0, step=0.05, description="Temperature",
                                style=style, **_hover("0 = always the most likely character")),
            "hg-temperature",
        )  # fmt: skip
        self.top_k = _classed(
            widgets.IntSlider(value=0, min=0, max=max(1, self.tokenizer.vocab_size),
                              description="Top-k", style=style,
                              **_hover("keep the k most likely characters (0 = all)")),
            "hg-top-k",
        )  # fmt: skip
        self.top_p = _classed(
            widgets.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="Top-p",
                                style=style, **_hover("nucleus sampling (1 = off)")),
            "hg-top-p",
        )  # fmt: skip
        self.length = _classed(
            widgets.IntSlider(value=min(300, max_length), min=1, max=max_length, step=1,
                              description="Length", style=style),
            "hg-length",
        )  # fmt: skip
        self.seed = _classed(widgets.IntText(value=0, description="Seed", style=style), "hg-seed")
        self.stop_at_end = _classed(
            widgets.Checkbox(value=True, description="stop at end of text", indent=False),
            "hg-stop-at-end",
        )

    def settings(self) -> GenerationSettings:
        """The settings the controls show now (top-k 0 and top-p 1 mean: no limit)."""
        return GenerationSettings(
            temperature=float(self.temperature.value),
            top_k=int(self.top_k.value) or None,
            top_p=float(self.top_p.value) if self.top_p.value < 1 else None,
            seed=int(self.seed.value),
            stop_at_end=bool(self.stop_at_end.value),
            use_cache=bool(self.use_cache),
        )

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current generation ends; returns False if it is still running."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def stop(self) -> None:
        """Ask the running generation to end after the current character."""
        self._stop_requested.set()

    def _on_stop(self, _button=None) -> None:
        self.stop()

    def _on_generate(self, _button=None) -> None:
        with self._lock:  # two quick clicks must not start two threads
            if self.running:
                return
            prompt = self.prompt.value
            try:
                pieces = stream(
                    self.model, self.tokenizer, prompt, int(self.length.value), self.settings()
                )
            except ValueError as error:
                self.status.value = _error_html(str(error))
                return
            self._stop_requested.clear()
            self.output.value = prompt
            self.status.value = "generating..."
            self.generate_button.disabled = True
            self.stop_button.disabled = False
            self._thread = threading.Thread(
                target=self._produce, args=(pieces, prompt), name="hourglass-generate", daemon=True
            )
            self._thread.start()

    def _produce(self, pieces, prompt: str) -> None:
        text, count, outcome = prompt, 0, "done"
        started = last_sent = time.monotonic()
        try:
            for piece in pieces:
                text += piece
                count += 1  # one piece per generated token
                if self._stop_requested.is_set():
                    outcome = "stopped"
                    break
                now = time.monotonic()
                if now - last_sent >= STREAM_REFRESH_SECONDS:
                    self.output.value = text
                    rate = count / max(now - started, 1e-9)
                    self.status.value = f"generating... {count} characters, {rate:.0f}/s"
                    last_sent = now
            else:
                outcome = "stopped" if self._stop_requested.is_set() else "done"
        except Exception as error:  # shown to the learner instead of dying silently in a thread
            outcome = "error"
            self.status.value = _error_html(f"{type(error).__name__}: {error}")
        finally:
            pieces.close()  # runs the generator's cleanup (restores the model's mode)
            self.output.value = text
            seconds = time.monotonic() - started
            if outcome != "error":
                self.status.value = f"{outcome}: {count} characters in {seconds:.1f} s"
            self.generate_button.disabled = False
            self.stop_button.disabled = True


def generation_demo(
    model, tokenizer, prompt: str = "", *, max_length: int = 2000, use_cache: bool = True
) -> GenerationDemo:
    """The generation app: type a prompt, set the sampling controls, press Generate.

    max_length: the largest value of the Length slider. use_cache: decode with per-level caches
    (fast); False recomputes the whole window for every character (works for any model).
    """
    return GenerationDemo(model, tokenizer, prompt, max_length=max_length, use_cache=use_cache)


class _ExplorerBase(widgets.VBox):
    """Shared parts: a text box that re-runs the model, level selector, image, status line."""

    css_name = "hg-explorer"

    def __init__(self, model, tokenizer, text: str, extra_controls: list):
        check_tokenizer_matches(model, tokenizer, type(self).__name__)
        self.model = model
        self.tokenizer = tokenizer
        self.inspection: analysis.Inspection | None = None
        self.text = _classed(
            widgets.Textarea(value=text, description="Text", continuous_update=False,
                             layout=widgets.Layout(width="100%", height="60px")),
            "hg-text",
        )  # fmt: skip
        self.level = _classed(widgets.Dropdown(description="Level", options=[0]), "hg-level")
        self.image = _classed(widgets.Image(format="png"), "hg-image")
        self.status = _classed(widgets.HTML(value=""), "hg-status")
        controls = widgets.HBox([self.level, *extra_controls])
        super().__init__([self.text, controls, self.status, self.image])
        self.add_class(self.css_name)
        self._updating = False
        self.text.observe(lambda change: self._rerun(), names="value")
        self.level.observe(lambda change: self._level_changed(), names="value")

    def _rerun(self) -> None:
        """Run the model on the current text, then redraw (errors go to the status line)."""
        try:
            self.inspection = analysis.inspect_text(self.model, self.tokenizer, self.text.value)
        except ValueError as error:
            self.status.value = _error_html(str(error))
            return
        self.status.value = ""
        self._updating = True
        try:
            levels = list(range(self.inspection.n_levels))
            if list(self.level.options) != levels:
                previous = self.level.value
                self.level.options = levels
                self.level.value = previous if previous in levels else 0
            self._refresh_choices()
        finally:
            self._updating = False
        self.redraw()

    def _level_changed(self) -> None:
        if self._updating or self.inspection is None:
            return
        self._updating = True
        try:
            self._refresh_choices()
        finally:
            self._updating = False
        self.redraw()

    def _refresh_choices(self) -> None:
        """Update selectors that depend on the level (subclasses)."""

    def _control_changed(self, _change=None) -> None:
        if not self._updating:
            self.redraw()

    def figure(self):
        raise NotImplementedError

    def redraw(self) -> None:
        """Draw the figure for the current choices into `image`."""
        if self.inspection is None:
            return
        try:
            self.image.value = viz.figure_to_png(self.figure(), dpi=WIDGET_DPI)
        except ValueError as error:
            self.status.value = _error_html(str(error))


class AttentionExplorer(_ExplorerBase):
    """Text box and level / block / head selectors; `image` shows the attention heatmap.

    Attributes: `text`, `level`, `block` (the layer within the level), `head` (an index or
    'mean'), `image` (an `ipywidgets.Image` holding the PNG), `status`, `inspection`.
    """

    css_name = "hg-attention-explorer"

    def __init__(self, model, tokenizer, text: str):
        self.block = _classed(widgets.Dropdown(description="Block", options=[0]), "hg-block")
        self.head = _classed(widgets.Dropdown(description="Head", options=[0]), "hg-head")
        super().__init__(model, tokenizer, text, [self.block, self.head])
        self.block.observe(self._control_changed, names="value")
        self.head.observe(self._control_changed, names="value")
        self._rerun()

    def _refresh_choices(self) -> None:
        look = self.inspection
        blocks = list(range(look.blocks(self.level.value)))
        if list(self.block.options) != blocks:
            previous = self.block.value
            self.block.options = blocks
            self.block.value = previous if previous in blocks else 0
        heads = [*range(look.heads()), "mean"]
        if list(self.head.options) != heads:
            previous = self.head.value
            self.head.options = heads
            self.head.value = previous if previous in heads else 0

    def figure(self):
        return viz.plot_attention(self.inspection, self.level.value, self.block.value,
                                  self.head.value)  # fmt: skip


class ActivationExplorer(_ExplorerBase):
    """Text box, level and capture-point selectors; `image` shows that level's hidden states.

    Attributes: `text`, `level`, `point` ('input', 'output' or 'block{j}'), `image`, `status`.
    """

    css_name = "hg-activation-explorer"

    def __init__(self, model, tokenizer, text: str):
        self.point = _classed(widgets.Dropdown(description="Where", options=["output"]),
                              "hg-point")  # fmt: skip
        super().__init__(model, tokenizer, text, [self.point])
        self.point.observe(self._control_changed, names="value")
        self._rerun()

    def _refresh_choices(self) -> None:
        blocks = self.inspection.blocks(self.level.value)
        points = ["input", *(f"block{j}" for j in range(blocks)), "output"]
        if list(self.point.options) != points:
            previous = self.point.value
            self.point.options = points
            self.point.value = previous if previous in points else "output"

    def figure(self):
        return viz.plot_level_activations(self.inspection, self.level.value, self.point.value)


def attention_explorer(
    model, tokenizer, text: str = "an old silent pond\na frog jumps in"
) -> AttentionExplorer:
    """The attention app: type a text, pick level, block and head; the heatmap follows."""
    return AttentionExplorer(model, tokenizer, text)


def activation_explorer(
    model, tokenizer, text: str = "an old silent pond\na frog jumps in"
) -> ActivationExplorer:
    """The activation app: type a text, pick a level and where to look; see its activations."""
    return ActivationExplorer(model, tokenizer, text)

"""Generation: continue a prompt, as one string (`generate`) or piece by piece (`stream`).

    text = generate(model, tokenizer, "An old pond", 200, temperature=0.8, top_p=0.95, seed=0)
    settings = GenerationSettings(temperature=0.8, top_k=20, stop="\n\n")
    for piece in stream(model, tokenizer, "An old pond", 200, settings, seed=0):
        print(piece, end="", flush=True)

Everything that shapes a generation, except the prompt and how many characters at most, is one
`GenerationSettings` (checked when it is made, so bad settings fail at the call). `generate` and
`stream` take one, or its fields as keywords, or both (the keywords override the object's
fields); the command line's `sample` and the generation widget build one too.

How one new character is chosen from the logits: `hourglass_edu.sampling`. Which decoder gives
the logits (cached or recomputed), and what happens when the context window is full:
`hourglass_edu.decoding`.

Prompts (`encode_prompt`): the model was trained on `<eot> doc1 <eot> doc2 <eot> ...`, so a prompt
is read as the beginning of a document: generation conditions on `<eot>` + prompt (an empty prompt
is just `<eot>`), normalized as the tokenizer normalizes. Characters outside the vocabulary raise a
ValueError naming them, unless `replace_unknown` says what to put in their place: the same rule for
every model, even one whose tokenizer has an `<unk>` token. `prompt_as_seen` gives the prompt as
the model reads it.

Stop strings: generation ends before the first stop string that appears; the stop string is not
part of the text. While streaming, text that might be the start of a stop string is held back
until it is clear that it is not.
"""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from hourglass_edu.decoding import CachedDecoder, make_decoder
from hourglass_edu.lm import eval_mode, model_device
from hourglass_edu.loading import check_tokenizer_matches
from hourglass_edu.sampling import (
    check_sampling_settings,
    check_seed,
    make_generator,
    sample_token,
    shown_number,
)

__all__ = ["GenerationSettings", "encode_prompt", "generate", "prompt_as_seen", "stream"]

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """How to generate: sampling rule, seed, decoder, when to stop, unknown prompt characters.

    temperature: 0 = greedy (always the most likely); higher = more surprising.
    top_k: sample only among the k most likely characters (None = no limit).
    top_p: nucleus sampling, the smallest set with probability >= p (None = no limit).
    seed: an int, a CPU torch.Generator (its state advances), or None (a fresh random seed).
    use_cache: decode with key/value caches (same text, faster) the models that have them
        (HourglassLM, LongShortLM, SimpleHierarchicalLM: `decoding.supports_cache`);
        other models always recompute the window.
    stop_at_end: stop when the model writes `<eot>` (the end of a document; not included).
    stop: a string or several; generation stops before the first one that appears. Stored as a
        tuple of strings (empty: no stop strings).
    replace_unknown: what to put in place of prompt characters outside the vocabulary ("" drops
        them; None = raise a ValueError naming them).
    threads: CPU threads torch may use while it computes each character. None = one thread for
        cached decoding on a CPU (a character's work is too small to share, and a second thread
        that has to wait for a busy core stalls every step: benchmarks/bench_generate.py measures
        it), torch's own setting otherwise.

    Settings are checked when made (ValueError saying what to change) and cannot be changed
    afterwards; `settings.replace(top_k=5)` makes a checked copy with some fields changed.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | torch.Generator | None = None
    use_cache: bool = True
    stop_at_end: bool = True
    stop: str | Sequence[str] | None = ()
    replace_unknown: str | None = None
    threads: int | None = None

    def __post_init__(self):
        check_sampling_settings(self.temperature, self.top_k, self.top_p)
        check_seed(self.seed)
        for name in ("use_cache", "stop_at_end"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        object.__setattr__(self, "stop", _stop_strings(self.stop))
        _check_threads(self.threads)
        if self.replace_unknown is not None and not isinstance(self.replace_unknown, str):
            raise ValueError(
                f"replace_unknown must be a string or None, got {self.replace_unknown!r}"
            )

    def replace(self, **changes) -> GenerationSettings:
        """A copy with some fields changed, checked again. Unknown names raise a TypeError."""
        names = [field.name for field in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise TypeError(
                f"unknown generation setting(s) {', '.join(unknown)}; the settings are "
                f"{', '.join(names)}"
            )
        return dataclasses.replace(self, **changes)


def thread_limit() -> int:
    """The most CPU threads generation may ask torch for: this machine's CPU count (or torch's
    own setting, if higher). Far more makes torch's thread pool abort or crash the process."""
    return max(os.cpu_count() or 1, torch.get_num_threads())


def _check_threads(threads) -> None:
    if threads is None:
        return
    limit = thread_limit()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= limit:
        raise ValueError(f"threads must be a whole number from 1 to {limit} (this machine's CPU "
                         f"threads) or None (the default), got {shown_number(threads)}")


def _stop_strings(stop) -> tuple[str, ...]:
    """`stop` as a tuple of non-empty strings (None or an empty sequence: no stop strings)."""
    if stop is None:
        return ()
    try:
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
    except TypeError:
        stops = (stop,)
    for item in stops:
        if not isinstance(item, str) or item == "":
            raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    return stops


def _resolve(settings: GenerationSettings | None, overrides: dict) -> GenerationSettings:
    """The settings a call uses: `settings` (default: all defaults) with `overrides` applied."""
    if settings is None:
        settings = GenerationSettings()
    elif not isinstance(settings, GenerationSettings):
        raise TypeError(
            f"settings must be a GenerationSettings (or None), got {type(settings).__name__}; "
            "pass sampling options by keyword, e.g. temperature=0.8"
        )
    return settings.replace(**overrides) if overrides else settings


# ---------------------------------------------------------------------------------------------
# Prompts and stop strings
# ---------------------------------------------------------------------------------------------


def encode_prompt(tokenizer, prompt: str, *, replace_unknown: str | None = None) -> list[int]:
    """Token ids for `<eot>` + prompt: generation starts where a document would start.

    One rule for every model: the prompt is normalized as the tokenizer normalizes its text, and
    characters outside the vocabulary raise a ValueError that names them, unless
    `replace_unknown` is given: each unknown character is then replaced by that string ("" drops
    them). This holds even for a tokenizer with an `<unk>` token: a prompt never silently turns
    into `<unk>`s (the model saw few of them, so it would continue from near-noise).
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if replace_unknown is not None and not isinstance(replace_unknown, str):
        raise ValueError(f"replace_unknown must be a string or None, got {replace_unknown!r:.40}")
    text = _normalized(tokenizer, prompt)
    unknown = _unknown_characters(tokenizer, text)
    if unknown:
        listed = ", ".join(f"{char!r} (U+{ord(char):04X})" for char in unknown[:20])
        if replace_unknown is None:
            raise ValueError(
                f"the prompt has characters the model's vocabulary lacks: {listed} (remove them, "
                "or pass replace_unknown=' ' (sample --replace-unknown ' ') to replace them, or "
                "'' to drop them)"
            )
        if _unknown_characters(tokenizer, _normalized(tokenizer, replace_unknown)):
            raise ValueError(f"replace_unknown={replace_unknown!r} is itself not in the vocabulary")
        text = "".join(replace_unknown if char in unknown else char for char in text)
    return [tokenizer.eot_id, *tokenizer.encode(text)]


def prompt_as_seen(tokenizer, prompt: str, *, replace_unknown: str | None = None) -> str:
    """The prompt as the model reads it: normalized, unknown characters replaced (see
    `encode_prompt`, which raises the same errors). What `sample` prints before the continuation."""
    return tokenizer.decode(encode_prompt(tokenizer, prompt, replace_unknown=replace_unknown)[1:])


def _normalized(tokenizer, text: str) -> str:
    form = getattr(tokenizer, "normalize", None)
    return unicodedata.normalize(form, text) if form else text


def _unknown_characters(tokenizer, text: str) -> list[str]:
    """The distinct characters of (already normalized) `text` outside the vocabulary, in order of
    appearance. A tokenizer without a `chars` list is asked character by character."""
    chars = getattr(tokenizer, "chars", None)
    if chars is not None:
        known = set(chars)
        return [char for char in dict.fromkeys(text) if char not in known]
    return [char for char in dict.fromkeys(text) if not _encodes(tokenizer, char)]


def _encodes(tokenizer, text: str) -> bool:
    try:
        tokenizer.encode(text)
    except ValueError:
        return False
    return True


class _StopStringFilter:
    """The text generated so far, cut before the first stop string, released once it is safe.

    `add(piece)` returns the text that can be shown now: everything except an end that could
    still grow into a stop string. Once a stop string appears, `stopped` is True and the text
    ends just before it; `rest()` returns what was held back and not yet shown.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = stops
        self.longest = max((len(stop) for stop in stops), default=0)
        self.text = ""
        self.shown = 0  # characters of text already returned
        self.stopped = False

    def add(self, piece: str) -> str:
        searched_from = max(0, len(self.text) - self.longest + 1)
        self.text += piece
        found = [self.text.find(stop, searched_from) for stop in self.stops]
        found = [position for position in found if position >= 0]
        if found:
            self.text = self.text[: min(found)]
            self.stopped = True
            return ""
        return self._release(len(self.text) - self._held_back())

    def rest(self) -> str:
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        if end <= self.shown:
            return ""
        piece, self.shown = self.text[self.shown : end], end
        return piece

    def _held_back(self) -> int:
        """Length of the longest end of the text that could still grow into a stop string."""
        longest = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:length]):
                    longest = length
                    break
        return longest


# ---------------------------------------------------------------------------------------------
# The public API: stream and generate
# ---------------------------------------------------------------------------------------------


def stream(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    settings: GenerationSettings | None = None,
    **overrides,
) -> Iterator[str]:
    """Yield the generated text piece by piece, as it is made (same text as `generate`).

    Each piece is normally one character. Text that might be the start of a stop string is held
    back until it is clear that it is not; the stop string itself is never yielded. Breaking out
    of the loop stops generation at once (no token is computed after the last piece consumed).
    The model is put in eval mode while generating and restored afterwards.
    """
    # Check everything before the first token, so that bad input fails at the call.
    _check_model_and_tokenizer(model, tokenizer)
    settings = _resolve(settings, overrides)
    count_ok = isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool)
    if not count_ok or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    prompt_ids = encode_prompt(tokenizer, prompt, replace_unknown=settings.replace_unknown)
    generator = make_generator(settings.seed)
    return _stream(model, tokenizer, prompt_ids, max_new_tokens, settings, generator)


def _check_model_and_tokenizer(model, tokenizer) -> None:
    """A model that can run, and its own tokenizer (`loading.check_tokenizer_matches`)."""
    if hasattr(model, "encode") and hasattr(model, "decode") and callable(tokenizer):
        raise ValueError("generate takes the model first, then the tokenizer: "
                         "generate(model, tokenizer, prompt, max_new_tokens)")
    if not callable(model):
        raise ValueError(f"model must be a language model (tokens -> logits), got "
                         f"{type(model).__name__}")
    missing = [name for name in ("encode", "decode", "eot_id") if not hasattr(tokenizer, name)]
    if missing:
        raise ValueError(f"tokenizer must have encode, decode and eot_id (a CharTokenizer), got "
                         f"{type(tokenizer).__name__}, which lacks {', '.join(missing)}")
    if model_device(model).type == "meta":
        raise ValueError("the model is on the meta device: it has shapes but no weights, so it "
                         "cannot generate; load it on a real device (device='cpu' or 'cuda')")
    check_tokenizer_matches(model, tokenizer, "generate")


def _stream(
    model, tokenizer, prompt_ids, max_new_tokens, settings: GenerationSettings, generator
) -> Iterator[str]:
    if max_new_tokens == 0:
        return
    with eval_mode(model):
        decoder = make_decoder(model, settings.use_cache)
        threads = _decoding_threads(decoder, settings.threads)
        with _cpu_threads(threads):
            logits = decoder.start(prompt_ids)
        stops = _StopStringFilter(settings.stop)
        for index in range(max_new_tokens):
            token = sample_token(
                logits, temperature=settings.temperature, top_k=settings.top_k,
                top_p=settings.top_p, generator=generator,
            )  # fmt: skip
            if settings.stop_at_end and token == tokenizer.eot_id:
                break
            ready = stops.add(tokenizer.decode([token]))
            if stops.stopped:
                break
            if ready:
                yield ready
            if index + 1 < max_new_tokens:  # the last token needs no logits after it
                with _cpu_threads(threads):  # only around the work: the caller keeps its setting
                    logits = decoder.feed(token)
        rest = stops.rest()
        if rest:
            yield rest


CACHED_DECODING_THREADS = 1  # see GenerationSettings.threads


def _decoding_threads(decoder, threads: int | None) -> int | None:
    if threads is not None:
        return threads
    on_cpu = decoder.device.type == "cpu"
    return CACHED_DECODING_THREADS if on_cpu and isinstance(decoder, CachedDecoder) else None


@contextmanager
def _cpu_threads(count: int | None):
    """torch uses `count` CPU threads inside the block (None: leave the setting alone)."""
    previous = torch.get_num_threads()
    if count is None or count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def generate(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    settings: GenerationSettings | None = None,
    **overrides,
) -> str:
    """Continue `prompt` by up to `max_new_tokens` characters and return the new text only.

    model: any `model(tokens (batch, length)) -> logits (batch, length, vocab)`; models with a
        cache (`decoding.supports_cache`) decode with it when `use_cache` (same result, faster).
    tokenizer: `encode(str) -> list[int]`, `decode(list[int]) -> str`, `eot_id`.
    settings: a `GenerationSettings` (None: the defaults); `overrides`: any of its fields by
        keyword (`temperature=0.8, seed=0`), applied on top of it.
    """
    return "".join(stream(model, tokenizer, prompt, max_new_tokens, settings, **overrides))

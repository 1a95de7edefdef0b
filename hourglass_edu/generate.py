"""Generating text: prompts, stop strings, streaming.

    text = generate(model, tokenizer, "An old pond", 200, temperature=0.8, top_p=0.95, seed=0)
    for piece in stream(model, tokenizer, "An old pond", 200, seed=0):
        print(piece, end="", flush=True)

How one new character is chosen from the logits: see `hourglass_edu.sampling`.

Prompts (`encode_prompt`): the model was trained on `<eot> doc1 <eot> doc2 <eot> ...`, so a prompt
is read as the beginning of a document: generation conditions on `<eot>` + prompt (an empty prompt
is just `<eot>`). Characters outside the vocabulary raise a ValueError naming them, unless
`replace_unknown` says what to put in their place.

Context window and decoders (cached or recomputed): see `hourglass_edu.decoders`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from hourglass_edu.decoders import make_decoder
from hourglass_edu.sampling import check_sampling_settings, make_generator, sample_token

# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def encode_prompt(tokenizer, prompt: str, *, replace_unknown: str | None = None) -> list[int]:
    """Token ids for `<eot>` + prompt: generation starts where a document would start.

    Characters the tokenizer does not know raise a ValueError that names them, unless
    `replace_unknown` is given: each unknown character is then replaced by that string ("" drops
    them). A tokenizer built with an unknown-character token maps them to it on its own.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    try:
        ids = tokenizer.encode(prompt)
    except ValueError as error:
        if replace_unknown is None:
            raise ValueError(
                f"the prompt has characters the model's vocabulary lacks: {error} "
                "(remove them, or pass replace_unknown=' ' to replace them, or '' to drop them)"
            ) from error
        unknown = {char for char in set(prompt) if not _encodes(tokenizer, char)}
        if replace_unknown and not _encodes(tokenizer, replace_unknown):
            raise ValueError(
                f"replace_unknown={replace_unknown!r} is itself not in the vocabulary"
            ) from error
        cleaned = "".join(replace_unknown if char in unknown else char for char in prompt)
        ids = tokenizer.encode(cleaned)
    return [tokenizer.eot_id, *ids]


def _encodes(tokenizer, text: str) -> bool:
    try:
        tokenizer.encode(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# The public API: stream and generate
# ---------------------------------------------------------------------------------------------


def _check_stop(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    for item in stops:
        if not isinstance(item, str) or item == "":
            raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    return stops


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could still grow into one of the stop strings."""
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest


def stream(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | torch.Generator | None = None,
    use_cache: bool = True,
    stop_at_end: bool = True,
    stop: str | Sequence[str] | None = None,
    replace_unknown: str | None = None,
) -> Iterator[str]:
    """Yield the generated text piece by piece, as it is made (same text as `generate`).

    Each piece is normally one character. Text that might be the start of a stop string is held
    back until it is clear that it is not; the stop string itself is never yielded. Breaking out
    of the loop stops generation at once (no token is computed after the last piece consumed).
    The model is put in eval mode while generating and restored afterwards.
    """
    # Check everything before the first token, so that bad input fails at the call.
    check_sampling_settings(temperature, top_k, top_p)
    count_ok = isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool)
    if not count_ok or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    stops = _check_stop(stop)
    prompt_ids = encode_prompt(tokenizer, prompt, replace_unknown=replace_unknown)
    generator = make_generator(seed)
    return _stream(
        model, tokenizer, prompt_ids, max_new_tokens, temperature, top_k, top_p, generator,
        use_cache, stop_at_end, stops,
    )


def _stream(
    model, tokenizer, prompt_ids, max_new_tokens, temperature, top_k, top_p, generator,
    use_cache, stop_at_end, stops,
) -> Iterator[str]:
    if max_new_tokens == 0:
        return
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        decoder = make_decoder(model, use_cache)
        logits = decoder.start(prompt_ids)
        text, emitted = "", 0
        for index in range(max_new_tokens):
            token = sample_token(
                logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
            )
            if stop_at_end and token == tokenizer.eot_id:
                break
            searched_from = max(0, len(text) - max((len(s) for s in stops), default=0) + 1)
            text += tokenizer.decode([token])
            found = [text.find(s, searched_from) for s in stops]
            found = [position for position in found if position >= 0]
            if found:
                text = text[: min(found)]
                break
            ready = len(text) - _held_back(text, stops)
            if ready > emitted:
                yield text[emitted:ready]
                emitted = ready
            if index + 1 < max_new_tokens:  # the last token needs no logits after it
                logits = decoder.feed(token)
        if len(text) > emitted:
            yield text[emitted:]
    finally:
        if was_training:
            model.train()


def generate(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | torch.Generator | None = None,
    use_cache: bool = True,
    stop_at_end: bool = True,
    stop: str | Sequence[str] | None = None,
    replace_unknown: str | None = None,
) -> str:
    """Continue `prompt` by up to `max_new_tokens` characters and return the new text only.

    model: any `model(tokens (batch, length)) -> logits (batch, length, vocab)`; an HourglassLM
        decodes with per-level caches when `use_cache` (same result, much faster).
    tokenizer: `encode(str) -> list[int]`, `decode(list[int]) -> str`, `eot_id`.
    temperature: 0 = greedy; top_k / top_p: see the module docstring. seed: an int, a CPU
        torch.Generator (its state advances), or None (a fresh random seed).
    stop_at_end: stop when the model writes `<eot>` (the end of a document; not included).
    stop: a string or list of strings; generation stops before the first one that appears.
    replace_unknown: what to put in place of prompt characters outside the vocabulary
        (None = raise a ValueError naming them).
    """
    return "".join(
        stream(
            model, tokenizer, prompt, max_new_tokens, temperature=temperature, top_k=top_k,
            top_p=top_p, seed=seed, use_cache=use_cache, stop_at_end=stop_at_end, stop=stop,
            replace_unknown=replace_unknown,
        )
    )

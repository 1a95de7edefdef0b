"""Decoders: the next-token logits for a growing window of tokens, within the context window.

`decoder.start(ids)` begins from a prompt and `decoder.feed(token)` appends one token; both return
the (vocab,) logits for the token after the window. Two decoders produce them:
- `RecomputeDecoder`: runs `model(window)` for every new token. Works for any model mapping
  `(batch, length)` tokens to `(batch, length, vocab)` logits; this is what public hourglass
  implementations do, and it costs a full forward pass per character.
- `CachedDecoder` (HourglassLM, LongShortLM, SimpleHierarchicalLM): keeps key/value caches, so
  each new character costs one position of work. For the hourglass: at full resolution and, once
  per completed group of k characters, one position at the shortened level (see
  `hourglass_edu.cached_decoding`); for Long-Short: its window plus one summary per finished
  segment; for the simple hierarchical model: one position per stream whose stride divides t
  (see `hourglass_edu.related.decoding`, which also says why HTransformerLM recomputes).
`make_decoder(model, use_cache)` picks one.

Context window: a model with `config.max_length` never sees more tokens than that. A longer prompt
keeps its last `max_length` tokens. When generation fills the window, the decoder drops the oldest
tokens, keeping the newest `max_length // 2`, and carries on from that shorter window (with the
cache, this is one new prefill of the kept tokens; then cheap steps again until the window is
full). Both decoders follow the same rule (it lives in `Decoder`), so cached and recomputed
generation stay identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hourglass_edu.cached_decoding import IncrementalDecoder
from hourglass_edu.hourglass import HourglassLM
from hourglass_edu.related.decoding import (
    LongShortIncrementalDecoder,
    SimpleHierarchicalIncrementalDecoder,
)
from hourglass_edu.related.long_short import LongShortLM
from hourglass_edu.related.simple_hierarchical import SimpleHierarchicalLM

__all__ = [
    "CachedDecoder",
    "Decoder",
    "RecomputeDecoder",
    "context_limit",
    "incremental_decoder",
    "make_decoder",
    "model_device",
    "supports_cache",
]


def context_limit(model) -> int | None:
    """The longest window the model may see (`model.config.max_length`), or None if unbounded."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_length", None)
    if limit is not None and limit < 2:
        raise ValueError(f"model.config.max_length must be >= 2 to generate, got {limit}")
    return limit


def model_device(model) -> torch.device:
    """Where the model's parameters live (the CPU for a model without parameters)."""
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return parameter.device if parameter is not None else torch.device("cpu")


class Decoder:
    """Holds the current window of token ids and returns the logits for the token after it.

    `start(ids)` begins from a prompt, `feed(token)` appends one token; both return (vocab,)
    logits. The window follows the rule in the module docstring; subclasses only say how to
    compute logits for a fresh window (`_prefill`) and after appending one token (`_step`).
    """

    def __init__(self, model):
        self.model = model
        self.max_length = context_limit(model)
        self.device = model_device(model)
        self.window: list[int] = []

    @property
    def kept_after_overflow(self) -> int | None:
        return None if self.max_length is None else self.max_length // 2

    @torch.no_grad()
    def start(self, ids: Sequence[int]) -> torch.Tensor:
        if len(ids) == 0:
            raise ValueError("cannot start decoding from an empty list of tokens")
        if self.max_length is not None:
            ids = ids[-self.max_length :]
        self.window = list(ids)
        return self._prefill(self.window)

    @torch.no_grad()
    def feed(self, token: int) -> torch.Tensor:
        if self.max_length is not None and len(self.window) >= self.max_length:
            self.window = self.window[-self.kept_after_overflow :] + [token]
            return self._prefill(self.window)
        self.window.append(token)
        return self._step(token)

    def _tensor(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.tensor([list(ids)], dtype=torch.long, device=self.device)

    def _prefill(self, ids: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def _step(self, token: int) -> torch.Tensor:
        raise NotImplementedError


class RecomputeDecoder(Decoder):
    """Runs the whole window through `model(tokens) -> logits` for every new token."""

    def _prefill(self, ids: list[int]) -> torch.Tensor:
        return self.model(self._tensor(ids))[0, -1]

    def _step(self, token: int) -> torch.Tensor:
        return self._prefill(self.window)


# The models that have an incremental decoder, and the class that decodes each.
INCREMENTAL_DECODERS = {
    HourglassLM: IncrementalDecoder,
    LongShortLM: LongShortIncrementalDecoder,
    SimpleHierarchicalLM: SimpleHierarchicalIncrementalDecoder,
}


def supports_cache(model) -> bool:
    """Whether `model` has a cached (incremental) decoder."""
    return isinstance(model, tuple(INCREMENTAL_DECODERS))


def incremental_decoder(model):
    """The incremental decoder of `model`'s class (`extend`, `prefill`, `step`)."""
    for model_class, decoder_class in INCREMENTAL_DECODERS.items():
        if isinstance(model, model_class):
            return decoder_class(model)
    names = sorted(cls.__name__ for cls in INCREMENTAL_DECODERS)
    raise ValueError(
        f"no cached decoder for {type(model).__name__} (only {names}); use use_cache=False"
    )


class CachedDecoder(Decoder):
    """Incremental decoding with key/value caches (`hourglass_edu.cached_decoding` for the
    hourglass, `hourglass_edu.related.decoding` for Long-Short and simple hierarchical)."""

    def __init__(self, model):
        super().__init__(model)
        self.incremental = incremental_decoder(model)

    def _prefill(self, ids: list[int]) -> torch.Tensor:
        return self.incremental.prefill(self._tensor(ids))[0, -1]

    def _step(self, token: int) -> torch.Tensor:
        return self.incremental.step(self._tensor([token]))[0, -1]


def make_decoder(model, use_cache: bool) -> Decoder:
    """The cached decoder for models that have one (HourglassLM, LongShortLM,
    SimpleHierarchicalLM), else the recomputing one."""
    if use_cache and supports_cache(model):
        return CachedDecoder(model)
    return RecomputeDecoder(model)

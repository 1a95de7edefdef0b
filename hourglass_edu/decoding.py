"""Decoding: the next-token logits for a growing window of tokens, within the context window.

`decoder.start(ids)` begins from a prompt and `decoder.feed(token)` appends one token; both return
the (vocab,) logits for the token after the window. Two decoders produce them:
- `RecomputeDecoder`: runs `model(window)` for every new token. Works for any model mapping
  `(batch, length)` tokens to `(batch, length, vocab)` logits; this is what public hourglass
  implementations do, and it costs a full forward pass per character.
- `CachedDecoder`: for a model whose `new_cache()` gives a `ModelCache` (HourglassLM,
  LongShortLM, SimpleHierarchicalLM): keeps key/value caches, so each new character costs one
  position of work. For the hourglass: at full resolution and, once per completed group of k
  characters, one position at the shortened level (`hourglass_edu.hourglass_cache`); for
  Long-Short: its window plus one summary per finished segment
  (`hourglass_edu.related.long_short_cache`); for the simple hierarchical model: one position per
  stream whose stride divides t (`hourglass_edu.related.simple_hierarchical_cache`).
  HTransformerLM has none (its pooled keys could be cached per finished block; not done here).
`make_decoder(model, use_cache)` picks one. The model says whether it has a cache: this module
knows no model class.

Token ids are checked here, once, on the host (`0 <= id < vocab_size`), so the model's own
device-side range check (one sync) is skipped for every new character.

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

from hourglass_edu.lm import LanguageModel, check_token_range, model_device

__all__ = ["CachedDecoder", "RecomputeDecoder", "make_decoder"]


def context_limit(model) -> int | None:
    """The longest window the model may see (`model.config.max_length`), or None if unbounded."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_length", None)
    if limit is not None and limit < 2:
        raise ValueError(f"model.config.max_length must be >= 2 to generate, got {limit}")
    return limit


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
        self._check_ids(self.window)
        return self._prefill(self.window)

    @torch.no_grad()
    def feed(self, token: int) -> torch.Tensor:
        self._check_ids([token])
        if self.max_length is not None and len(self.window) >= self.max_length:
            self.window = self.window[-self.kept_after_overflow :] + [token]
            return self._prefill(self.window)
        self.window.append(token)
        return self._step(token)

    def _check_ids(self, ids: Sequence[int]) -> None:
        """The token range check, on the host (plain ints: no device sync)."""
        vocab_size = getattr(getattr(self.model, "config", None), "vocab_size", None)
        if vocab_size is not None:
            check_token_range(min(ids), max(ids), vocab_size)

    def _tensor(self, ids: Sequence[int]) -> torch.Tensor:
        # non_blocking: the copy to an accelerator need not wait for the queued work (no sync)
        return torch.tensor([list(ids)], dtype=torch.long).to(self.device, non_blocking=True)

    def _prefill(self, ids: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def _step(self, token: int) -> torch.Tensor:
        raise NotImplementedError


class RecomputeDecoder(Decoder):
    """Runs the whole window through `model(tokens) -> logits` for every new token."""

    def _prefill(self, ids: list[int]) -> torch.Tensor:
        tokens = self._tensor(ids)
        if isinstance(self.model, LanguageModel):  # ids checked on the host already
            return self.model(tokens, check_range=False)[0, -1]
        return self.model(tokens)[0, -1]

    def _step(self, token: int) -> torch.Tensor:
        return self._prefill(self.window)


def supports_cache(model) -> bool:
    """Whether `model` has a cache for decoding one token at a time (`model.new_cache()`)."""
    return isinstance(model, LanguageModel) and type(model).new_cache is not LanguageModel.new_cache


class CachedDecoder(Decoder):
    """Decoding with the model's own cache (`model.new_cache()`, a `ModelCache`): a prefill
    starts a new cache, a step extends it by one token."""

    def __init__(self, model):
        if not supports_cache(model):
            raise ValueError(f"no cached decoder for {type(model).__name__} (it has no "
                             "new_cache()); use use_cache=False")
        super().__init__(model)
        self.cache = model.new_cache()  # refuses a model that cannot decode one token at a time

    def _prefill(self, ids: list[int]) -> torch.Tensor:
        self.cache = self.model.new_cache()
        return self.cache.extend(self._tensor(ids), check_range=False)[0, -1]

    def _step(self, token: int) -> torch.Tensor:
        return self.cache.extend(self._tensor([token]), check_range=False)[0, -1]


def make_decoder(model, use_cache: bool) -> Decoder:
    """The cached decoder for models that have a cache (`supports_cache`), else the recomputing
    one."""
    if use_cache and supports_cache(model):
        return CachedDecoder(model)
    return RecomputeDecoder(model)

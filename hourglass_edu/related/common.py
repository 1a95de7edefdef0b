"""What the related language models share with ``HourglassLM``.

Each related model is a stack of the library's pre-norm ``TransformerBlock``s with a different
attention plugged in, between the same token embedding, final LayerNorm and output head, with the
same initialisation, token checks, parameter count and ``run_with_cache``. So the trainer,
``generate`` (uncached: ``use_cache=True`` falls back to recomputing the window) and the capture
tools treat all models alike: ``model(tokens) -> logits``, ``model.config`` with ``to_dict`` /
``from_dict``, ``model.num_parameters()``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from hourglass_edu.blocks import RotaryEmbedding, record
from hourglass_edu.hourglass import HourglassLM


class RelatedConfig:
    """Mixin for the related models' config dataclasses: validation, ``to_dict``, ``from_dict``.

    Fields every config has: vocab_size, d_model, n_heads, n_layers, d_ff (None -> 4 * d_model),
    dropout, max_length, rotary_base.
    """

    def _check_common(self) -> None:
        def positive_int(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "max_length"):
            positive_int(name)
        if self.d_ff is not None:
            positive_int("d_ff")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"n_heads={self.n_heads} does not divide d_model={self.d_model}: choose n_heads "
                "that divides d_model"
            )
        if (self.d_model // self.n_heads) % 2 != 0:
            raise ValueError(
                f"head dimension d_model / n_heads = {self.d_model // self.n_heads} is odd; "
                "rotary positions rotate pairs of features: make it even"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not self.rotary_base > 1.0:
            raise ValueError(f"rotary_base must be > 1, got {self.rotary_base!r}")

    @property
    def feed_forward_width(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    def to_dict(self) -> dict:
        """JSON-able dict (tuples become lists); ``from_dict`` restores an equal config."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict):
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} keys {unknown}: known keys are {sorted(known)}"
            )
        return cls(**data)


class RelatedLM(nn.Module):
    """Embedding -> ``body`` (defined by each model) -> final LayerNorm -> head.

    ``model(tokens)``: tokens ``(batch, length)`` long -> logits ``(batch, length, vocab_size)``;
    logits at ``t`` predict token ``t + 1`` and depend only on tokens ``<= t``.
    ``run_with_cache(tokens)`` -> ``(logits, cache)``; names are listed by each model and always
    include ``embedding`` and ``final_norm``.
    """

    config_class: type = RelatedConfig

    def __init__(self, config):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ValueError(
                f"{type(self).__name__} needs a {self.config_class.__name__} "
                f"(use {self.config_class.__name__}.from_dict for a saved dict)"
            )
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.rotary = RotaryEmbedding(config.d_model // config.n_heads, config.rotary_base)
        self.final_norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    # The same rules as the hourglass, so comparisons differ only in the attention pattern.
    _init_weights = HourglassLM._init_weights
    check_tokens = HourglassLM.check_tokens
    num_parameters = HourglassLM.num_parameters

    def body(self, x: torch.Tensor, capture: dict | None) -> torch.Tensor:
        """``(batch, length, d_model)`` -> same; records its own capture names."""
        raise NotImplementedError

    def _run(self, tokens: torch.Tensor, capture: dict | None) -> torch.Tensor:
        self.check_tokens(tokens)
        x = self.embedding_dropout(self.embedding(tokens))
        record(capture, "embedding", x)
        x = self.final_norm(self.body(x, capture))
        record(capture, "final_norm", x)
        return self.head(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._run(tokens, None)

    def run_with_cache(self, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass that also returns every named activation (detached)."""
        capture: dict[str, torch.Tensor] = {}
        logits = self._run(tokens, capture)
        return logits, capture

"""The language-model base every model in the package shares: tokens -> embedding -> body -> logits.

`LanguageModel` holds what does not depend on the architecture: the token embedding, the rotary
positions handed to the body, the final LayerNorm and the output head, the initialisation, the
token checks, `run_with_cache`, the parameter count and the config round trip. A subclass only
builds its `body` (the hourglass levels, or a related design's stack of blocks).

`ModelConfig` is the base of every model config (a dataclass per model): shared validation,
`to_dict` / `from_dict`. Every model class is listed in registry.py (above the models), so a
checkpoint or model folder records the class it holds and `build_model_from_config` rebuilds any
of them.

`ModelCache` is the base of what a model keeps when it is decoded one token at a time (key/value
caches and the like); a model that has one returns it from `new_cache()`.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from hourglass_edu.attention import check_heads
from hourglass_edu.blocks import RotaryEmbedding, TransformerBlock, record
from hourglass_edu.files import quoted
from hourglass_edu.loading import check_buildable, check_size_field

__all__ = ["BlockStackConfig", "LanguageModel", "ModelCache", "ModelConfig"]

@dataclass(kw_only=True)
class ModelConfig:
    """Base of the model config dataclasses: the fields every model has, validation,
    ``to_dict``, ``from_dict``. A model's config adds its own fields (keyword-only here, so a
    subclass may add fields without defaults or in any order).

    ``d_ff`` None means ``4 * d_model``; ``max_length`` is the longest sequence the model takes.
    """

    vocab_size: int
    d_model: int = 256
    n_heads: int = 4
    d_ff: int | None = None
    dropout: float = 0.0
    max_length: int = 1024
    rotary_base: float = 10000.0

    def check_common(self, integer_fields=("vocab_size", "d_model", "n_heads", "max_length")):
        """Raise ValueError, saying what to change, for a value no model can be built with.

        Sizes are positive whole numbers within `loading.SIZE_LIMITS` (checked before anything
        loops over them or sizes a tensor by them), real numbers are finite and not True/False,
        and every field declared ``bool`` holds True or False (``"false"`` would be true).
        """
        for name in (*integer_fields, *(("d_ff",) if self.d_ff is not None else ())):
            check_size_field(name, getattr(self, name))
        check_heads(self.d_model, self.n_heads)
        dropout, base = self.dropout, self.rotary_base
        if not _is_real(dropout) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if not _is_real(base) or not 1.0 < base < math.inf:
            raise ValueError(f"rotary_base must be a finite number > 1, got {base!r}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in ("bool", bool) and not isinstance(value, bool):
                raise ValueError(f"{field.name} must be True or False, got {value!r}")

    @property
    def feed_forward_width(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists); ``from_dict`` restores an equal config."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise ValueError(f"a {cls.__name__} is read from a dict, got {type(data).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}: known keys are "
                             f"{sorted(known)}")
        missing = sorted(field.name for field in dataclasses.fields(cls)
                         if field.name not in data and field.default is dataclasses.MISSING
                         and field.default_factory is dataclasses.MISSING)
        if missing:
            raise ValueError(f"{cls.__name__} is missing required keys {missing}")
        return cls(**data)


def _is_real(value) -> bool:
    """A real number (int or float, not a bool: True would pass for 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class LanguageModel(nn.Module):
    """Embedding -> ``body`` (defined by each model) -> final LayerNorm -> head.

    ``model(tokens)``: tokens ``(batch, length)`` long, ``1 <= length <= config.max_length``
    -> logits ``(batch, length, vocab_size)``; logits at ``t`` predict token ``t + 1`` and depend
    only on tokens ``<= t`` (tested for every model). ``run_with_cache(tokens)`` returns the logits
    and every named activation; the names always include ``embedding`` and ``final_norm``.

    Init (``init_weights``, called by each subclass once its body exists): GPT-2 style, weights
    ~ N(0, 0.02), biases 0, and every linear layer marked ``is_residual_output`` (the last layer
    of a residual branch, which adds to the residual stream) at ``0.02 / sqrt(2 * max(1, R // 2))``,
    where R is the number of marked layers in the whole model, so the residual stream's variance
    does not grow with the number of branches that add to it. R counts marked layers, not
    blocks: a block has two (attention's output projection, the feed-forward's output), so has
    each attention shortening or upsampling layer, and the simple hierarchical model's merge
    has one (an odd R rounds down). Only for a model of blocks alone is this GPT-2's
    ``1 / sqrt(2 * number_of_blocks)``.
    """

    config_class: ClassVar[type] = ModelConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            name = self.config_class.__name__
            raise ValueError(f"{type(self).__name__} needs a {name} (use {name}.from_dict for a "
                             "saved dict)")
        if torch.empty(0).device.type != "meta":  # (torch.get_default_device is 2.3+)
            # The one size bound of every model built, by any path, before any weight exists:
            # the same model on `meta` (no memory), its parameters and activations counted.
            check_buildable(type(self), config, type(self).__name__)
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.rotary = RotaryEmbedding(config.d_model // config.n_heads, config.rotary_base)
        self.final_norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def body(self, x: torch.Tensor, capture: dict | None) -> torch.Tensor:
        """``(batch, length, d_model)`` -> same; records its own capture names."""
        raise NotImplementedError

    def init_weights(self) -> None:
        residual_outputs = [m for m in self.modules() if getattr(m, "is_residual_output", False)]
        # pairs of marked layers (a block's two, an attention resampling layer's two, ...)
        residual_pairs = max(1, len(residual_outputs) // 2)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                std = 0.02
                if getattr(module, "is_residual_output", False):
                    std = 0.02 / math.sqrt(2 * residual_pairs)
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if getattr(self.config, "tie_embeddings", False):
            self.head.weight = self.embedding.weight

    def check_tokens(self, tokens: torch.Tensor, *, check_range: bool = True) -> None:
        """Raise ValueError unless tokens is a ``(batch, length)`` integer tensor that fits, with
        ids in ``[0, vocab_size)`` (``check_range=False``: the caller checked the ids already,
        on the host, as the decoders do, so that generating a character costs no extra sync)."""
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens)
            raise ValueError(f"tokens must be a (batch, length) tensor, got {shape}; "
                             "add a batch axis with tokens[None] for one sequence")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be integer ids (torch.long), got {tokens.dtype}")
        length = tokens.shape[1]
        if length < 1:
            raise ValueError("tokens has length 0: feed at least one token (e.g. <eot>)")
        if length > self.config.max_length:
            raise ValueError(
                f"sequence length {length} exceeds config.max_length={self.config.max_length}: "
                "feed shorter sequences (crop to the last max_length tokens) or build the model "
                "with a larger max_length"
            )
        # Not on `meta` (no values to read) nor inside torch.compile (a host read would break
        # the graph in two; compiled code is fed the trainer's own batches).
        if check_range and tokens.numel() > 0 and tokens.device.type != "meta" \
                and not torch.compiler.is_compiling():
            # One min/max reduction (one host sync): on CUDA an id out of range would be a
            # device-side assert that kills the process, not an error one can catch.
            low, high = torch.stack((tokens.min(), tokens.max())).tolist()
            check_token_range(low, high, self.config.vocab_size)

    def _run(self, tokens: torch.Tensor, capture: dict | None, *,
             check_range: bool = True) -> torch.Tensor:
        self.check_tokens(tokens, check_range=check_range)
        x = self.embedding_dropout(self.embedding(tokens))
        record(capture, "embedding", x)
        x = self.final_norm(self.body(x, capture))
        record(capture, "final_norm", x)
        return self.head(x)

    def forward(self, tokens: torch.Tensor, *, check_range: bool = True) -> torch.Tensor:
        return self._run(tokens, None, check_range=check_range)

    def run_with_cache(self, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass that also returns every named activation (detached), by name.

        Attention weights are computed by the explicit attention path here (same numbers as the
        fused one, to float rounding).
        """
        capture: dict[str, torch.Tensor] = {}
        logits = self._run(tokens, capture)
        return logits, capture

    def num_parameters(self, include_embedding: bool = True) -> int:
        """Number of trainable parameters (tied weights counted once)."""
        total = sum(parameter.numel() for parameter in self.parameters())  # tied: listed once
        return total if include_embedding else total - self.embedding.weight.numel()

    def longest_sequence(self, length: int) -> int:
        """The longest sequence any layer runs on for ``length`` tokens: ``length``, or more in a
        design that pads (the hourglass pads each level to a multiple of its shortening factor).
        The activation bound (`loading.activation_bytes`) counts it."""
        return length

    def new_cache(self) -> ModelCache | None:
        """An empty cache for decoding this model one token at a time (a `ModelCache`), or
        None: the model has none, and generation recomputes the window for every character."""
        return None

    # What the comparison (related/compare.py) and the tests read from the registry: the
    # variants this class contributes to the side-by-side comparison, and a small config.
    comparison_variants: ClassVar[tuple[str, ...]] = ()
    small_fields: ClassVar[dict[str, Any]] = {}

    @classmethod
    def comparison_config(cls, variant: str, *, common: dict[str, Any], n_layers: int,
                          window: int) -> ModelConfig:
        """The config of comparison variant `variant` (one of `comparison_variants`)."""
        raise NotImplementedError

    @classmethod
    def small_config(cls, vocab_size: int, **fields) -> ModelConfig:
        """A small config of this class (d_model 32, 2 heads, max_length 64) for tests."""
        sizes = dict(vocab_size=vocab_size, d_model=32, n_heads=2, max_length=64)
        return cls.config_class(**{**sizes, **cls.small_fields, **fields})


def check_token_range(low: int, high: int, vocab_size: int) -> None:
    """Raise ValueError unless the smallest and largest token ids lie in ``[0, vocab_size)``."""
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"token ids must be in [0, {vocab_size}) (0 <= id < vocab_size={vocab_size}), got "
            f"ids from {low} to {high}: encode text with the model's own tokenizer"
        )


class ModelCache:
    """What a model keeps between calls when it is decoded one token at a time.

    ``cache.extend(tokens (batch, new))`` appends any number of tokens (a prompt, or one token)
    and returns their logits ``(batch, new, vocab)``, equal (to float rounding) to
    ``model(all_tokens_so_far)[:, -new:]``. A subclass says how its body handles the new
    positions (`_extend_body`); it reuses the model's own layers through their one-token methods
    (e.g. `TransformerBlock.extend`), so the math is written once. Eval mode only (dropout is not
    applied); beyond ``config.max_length`` it raises, like the model.
    """

    def __init__(self, model: LanguageModel):
        self.model = model
        self.length = 0  # tokens decoded so far

    @torch.no_grad()
    def extend(self, tokens: torch.Tensor, *, check_range: bool = True) -> torch.Tensor:
        """``check_range=False``: the ids were checked on the host (no device sync here)."""
        model = self.model
        if model.training and model.config.dropout > 0:
            raise ValueError("call model.eval() before decoding: dropout is not applied here")
        model.check_tokens(tokens, check_range=check_range)
        if self.length + tokens.shape[1] > model.config.max_length:
            raise ValueError(
                f"decoding past config.max_length={model.config.max_length} tokens: start again "
                "from the last tokens (generate() does this for you)"
            )
        x = self._extend_body(model.embedding(tokens), self.length)
        self.length += tokens.shape[1]
        return model.head(model.final_norm(x))

    def _extend_body(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """New embeddings ``(batch, new, d)`` at positions ``start ..`` -> body outputs."""
        raise NotImplementedError


@dataclass
class BlockStackConfig(ModelConfig):
    """The fields of a model whose body is a plain stack of `n_layers` blocks; a design adds its
    own fields after these and checks them in its `__post_init__` (after calling this one)."""

    n_layers: int = 6

    def __post_init__(self):
        self.check_common(("vocab_size", "d_model", "n_heads", "n_layers", "max_length"))


class BlockStackLM(LanguageModel):
    """A `LanguageModel` whose body is `n_layers` pre-norm blocks, each with the attention that
    `make_attention()` builds: the related designs differ from a transformer only there.

    Capture names: ``embedding``, ``block{j}`` (block output), ``block{j}.attn``, ``final_norm``.
    """

    config_class = BlockStackConfig

    def __init__(self, config: BlockStackConfig):
        super().__init__(config)
        self.blocks = nn.ModuleList(
            TransformerBlock(config.d_model, config.n_heads, config.feed_forward_width,
                             dropout=config.dropout, attention=self.make_attention())
            for _ in range(config.n_layers)
        )
        self.init_weights()

    def make_attention(self) -> nn.Module:
        """One layer's attention module (it may use `self.config` and `self.rotary`)."""
        raise NotImplementedError

    def body(self, x: torch.Tensor, capture: dict | None) -> torch.Tensor:
        # the rotation angles once for every block (not once per attention call)
        angles = self.rotary.angles(torch.arange(x.shape[1], device=x.device))
        for j, block in enumerate(self.blocks):
            x = block(x, angles, capture=capture, name=f"block{j}")
        return x


def model_device(model) -> torch.device:
    """Where the model's parameters live (the CPU for anything without parameters): how the
    library asks a built model for its device (a device *name* a user gives is checked by
    `devices.resolve_device`)."""
    parameters = model.parameters() if isinstance(model, nn.Module) else iter(())
    parameter = next(iter(parameters), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextmanager
def eval_mode(model):
    """Eval mode (no dropout) inside the block, the model's own mode restored afterwards, even on
    an error; anything that is not an ``nn.Module`` is left alone."""
    if not isinstance(model, nn.Module):
        yield model
        return
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# The dtypes weights are saved in (float32 training, float16 / bfloat16 model folders; float64
# is exact in float32's place). An integer or bool tensor would be cast to float silently.
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_weights(model: LanguageModel, weights: dict, where: str) -> None:
    """Raise ValueError unless `weights` has exactly the model's tensors, shape for shape, each
    a dense floating-point tensor (`WEIGHT_DTYPES`; meta tensors from a header count by dtype)."""
    expected = model.state_dict()
    names = sorted(weights, key=str)  # a damaged file may hold keys that are not strings
    bad = [quoted(name) for name in names if not isinstance(weights[name], torch.Tensor)]
    missing = sorted(set(expected) - set(weights))
    unexpected = [quoted(name) for name in names if name not in expected]
    if bad or missing or unexpected:
        found = [f"{what} {', '.join(items[:5])}" + (f" and {len(items) - 5} more"
                                                     if len(items) > 5 else "")
                 for what, items in (("missing", missing), ("unexpected", unexpected),
                                     ("not tensors", bad)) if items]
        raise ValueError(f"{where}: the weights do not fit the config ({'; '.join(found)}); "
                         "the file is damaged or holds another model")
    for name, value in expected.items():
        weight = weights[name]
        if weight.dtype not in WEIGHT_DTYPES or weight.layout != torch.strided:
            kind = weight.dtype if weight.layout == torch.strided else weight.layout
            raise ValueError(f"{where}: weight {name} is {str(kind).removeprefix('torch.')}, "
                             "not a dense float16, bfloat16, float32 or float64 tensor (it would "
                             "be cast silently); the file is damaged or not of this library")
        if tuple(weight.shape) != tuple(value.shape):
            raise ValueError(f"{where}: weight {name} has shape {tuple(weight.shape)}, "
                             f"the config needs {tuple(value.shape)}; the file is damaged")

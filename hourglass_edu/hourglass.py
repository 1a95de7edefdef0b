"""The Hourglass language model (Nawrot et al. 2021): config, structure notation, levels, LM.

Structure notation
------------------
``"2@1 8@3 2@1"``: 2 blocks at full resolution, 8 blocks on a sequence shortened 3x, 2 blocks at
full resolution. Parts are ``LAYERS@FACTOR``; factors are cumulative from the outside in and must
read the same backwards (``"2@1 2@2 4@8 2@2 2@1"``: the middle level shortens its outer
neighbour by 8 / 2 = 4). The outermost factor is 1, each factor divides the next one inwards and
is at least twice it. The layer counts before and after a level may differ (``"3@1 8@3 1@1"``).
``"12@1"`` is a plain transformer.

Levels
------
``level0`` works at full resolution (outermost), ``level1`` on the first shortened sequence, and
so on. ``HourglassLevel.forward`` runs, in order: pre blocks; pad to a multiple of ``k`` and
shift right by ``k - 1`` (the residual is kept unshifted); shorten; the inner level (recursion);
upsample, crop and add the residual; post blocks. See ``resampling.py`` for why in this order.

Capture names (``HourglassLM.run_with_cache``)
-----------------------------------------------
All tensors are detached. ``n_i`` is the length at level ``i`` (``n_0`` = number of tokens,
``n_{i+1} = ceil(n_i / k_i)``), ``d`` = ``d_model``, ``h`` = ``n_heads``.

* ``level{i}.input`` ``(batch, n_i, d)`` and ``level{i}.output`` ``(batch, n_i, d)``
* ``level{i}.block{j}`` ``(batch, n_i, d)``: output of block ``j``; blocks are numbered within
  a level, pre blocks first, then post blocks (the innermost level has only pre blocks)
* ``level{i}.block{j}.attn`` ``(batch, h, n_i, n_i)``: attention weights (query, key)
* ``level{i}.shortened`` ``(batch, n_{i+1}, d)``: output of shortening (= ``level{i+1}.input``)
* ``level{i}.upsampled`` ``(batch, n_i, d)``: upsampled inner output plus the residual, i.e. what
  the post blocks receive
* ``level{i}.down_attn`` ``(batch, h, n_{i+1}, ceil(n_i / k_i) * k_i)`` and ``level{i}.up_attn``
  ``(batch, h, n_i, n_{i+1})``: weights of attention shortening / upsampling (when used)
* ``embedding`` ``(batch, n_0, d)`` and ``final_norm`` ``(batch, n_0, d)`` (extensions)

Capturing costs nothing when unused: the capture dict is ``None`` in ``forward`` and every record
is skipped; attention weights come from the explicit attention path only inside
``run_with_cache``.

FLOP counting rule (``HourglassLM.flops_per_token``)
----------------------------------------------------
The **useful work** of a forward pass (a training step costs about 3x): 2 FLOPs per multiply-add,
counting the matrix products: weight matrices (biases, norms, softmax, activations, averaging and
the embedding lookup are ignored) and attention's two products, 4 * d FLOPs per (query, visible
key) pair, counting only the keys the mask lets a query see (causal: ``n (n+1) / 2`` pairs). This
is the ideal; the **executed work** of an implementation can be more: the explicit attention path
computes all ``n^2`` pairs and hides the masked ones, about twice the useful work in attention
(notebook 05, *Useful work and executed work*). Every level's total is divided by the number of
tokens, so levels are comparable and add up.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch
from torch import nn

from hourglass_edu.attention import ATTENTION_IMPLS
from hourglass_edu.blocks import RotaryEmbedding, TransformerBlock, record
from hourglass_edu.hourglass_cache import HourglassCache
from hourglass_edu.lm import LanguageModel, ModelConfig, model_device
from hourglass_edu.resampling import ShiftRight, pad_to_multiple, resampling_class

__all__ = [
    "HourglassConfig",
    "HourglassLM",
    "HourglassLevel",
    "LevelSpec",
    "parse_structure",
    "without_shift",
]


@dataclass(frozen=True)
class LevelSpec:
    """One level of a parsed structure.

    ``pre_layers`` / ``post_layers``: blocks before / after the inner level (the innermost level
    has only ``pre_layers``); ``total_factor``: shortening relative to the tokens; ``factor``:
    how much the *next* level shortens this one (``None`` for the innermost level).
    """

    pre_layers: int
    post_layers: int
    total_factor: int
    factor: int | None


SHIFT_FILLS = ("zeros", "learned")  # what the k - 1 shift prepends (`ShiftRight`)

_PART = re.compile(r"^([0-9]+)@([0-9]+)$")  # ASCII digits only: int() would read "١@١" too
_MAX_DIGITS = 9  # a layer count or factor of more digits is beyond any limit (and int() of
# thousands of digits is refused by Python itself, with a message naming no field)
_EXAMPLE = "e.g. '2@1 8@3 2@1' or '2@1 2@2 4@8 2@2 2@1'"


def _read_part(part: str, structure: str) -> tuple[int, int]:
    """``"LAYERS@FACTOR"`` -> (layers, factor); ValueError saying what a part must be."""
    match = _PART.match(part)
    if match is None:
        raise ValueError(
            f"cannot read {part!r} in structure {structure!r}: each part must be "
            f"LAYERS@FACTOR with whole numbers in the digits 0-9, {_EXAMPLE}"
        )
    if max(len(match.group(1)), len(match.group(2))) > _MAX_DIGITS:
        raise ValueError(f"structure part {part[:24]!r}... has a number of more than "
                         f"{_MAX_DIGITS} digits, beyond any limit of this library; use numbers "
                         f"like {_EXAMPLE}")
    return int(match.group(1)), int(match.group(2))


def parse_structure(structure: str) -> list[LevelSpec]:
    """Parse the paper's notation into levels, outermost first. Raises ValueError if malformed."""
    if not isinstance(structure, str) or not structure.strip():
        raise ValueError(f"structure must be a non-empty string like {_EXAMPLE}, got {structure!r}")
    layers, factors = (list(numbers) for numbers in zip(
        *(_read_part(part, structure) for part in structure.split()), strict=True))
    problem = _structure_problem(layers, factors)
    if problem:
        raise ValueError(f"structure {structure!r}{problem}")
    middle = len(layers) // 2  # the innermost level: only pre blocks, no next factor
    return [LevelSpec(pre_layers=layers[i], post_layers=layers[-1 - i] if i < middle else 0,
                      total_factor=factors[i],
                      factor=factors[i + 1] // factors[i] if i < middle else None)
            for i in range(middle + 1)]


def _structure_problem(layers: list[int], factors: list[int]) -> str | None:
    """What is wrong with a structure's parts (the first thing found), or None."""
    middle = len(factors) // 2
    if len(factors) % 2 == 0:
        return (f" has {len(factors)} parts; it needs an odd number: the levels going in, the "
                f"innermost level, the same levels coming out ({_EXAMPLE})")
    if factors != factors[::-1]:
        return (f" is not palindromic: factors {factors} must read the same backwards, because "
                f"every level that shortens must upsample again ({_EXAMPLE})")
    if factors[0] != 1:
        return (f" starts at factor {factors[0]}: the outermost level must be at full "
                "resolution (factor 1), so the model predicts every token")
    for outer, inner in zip(factors[:middle], factors[1 : middle + 1], strict=True):
        if inner % outer != 0:
            return (f": factor {inner} is not a multiple of the enclosing factor {outer}; each "
                    "level must shorten its outer neighbour by a whole number "
                    f"(try {outer * max(2, round(inner / outer))})")
        if inner // outer < 2:
            return (f": going from factor {outer} to {inner} shortens by {inner // outer}; a "
                    "shortening factor inside a level must be at least 2 (merge equal "
                    "neighbours into one part, e.g. '12@1' for a plain transformer)")
    if layers[middle] < 1:
        return ": the innermost level has 0 layers; give it at least 1"
    return None


@dataclass
class HourglassConfig(ModelConfig):
    """Everything that defines an ``HourglassLM`` (saved next to the weights as JSON): the
    shared `ModelConfig` fields (vocab_size, d_model, n_heads, d_ff, dropout, max_length,
    rotary_base) and these.

    * ``structure``: the paper's notation (see module docstring).
    * ``shortening``: a name in `resampling.SHORTENINGS` (``"avg"``, ``"linear"``,
      ``"attention"``); ``upsampling``: one in `resampling.UPSAMPLINGS` (``"repeat"``,
      ``"linear"``, ``"attention"``).
    * ``shift_fill``: what the ``k - 1`` shift prepends: ``"zeros"`` or ``"learned"`` vectors.
    * ``d_ff``: feed-forward width (``None`` -> ``4 * d_model``).
    * ``max_length``: longest sequence accepted (rotary positions have no hard limit; this is
      the length the model is meant for, and a clear error beyond it).
    * ``attention_impl``: ``"fused"`` (SDPA, default) or ``"explicit"`` (step by step).
    * ``tie_embeddings``: share the token embedding with the output head (default False: a
      character vocabulary is small, so tying saves little, and untied is the simpler picture).
    * ``unsafe_disable_shift``: FOR TEACHING ONLY. Skips the ``k - 1`` shift so the model can see
      the future (the leak demo and the negative-control test). Never train with it.
    """

    structure: str = "2@1 8@3 2@1"
    shortening: str = "avg"
    upsampling: str = "repeat"
    shift_fill: str = "zeros"
    attention_impl: str = "fused"
    tie_embeddings: bool = False
    unsafe_disable_shift: bool = False

    def __post_init__(self):
        self.check_common()
        resampling_class("shortening", self.shortening)  # the kinds: resampling.py's tables
        resampling_class("upsampling", self.upsampling)
        for name, allowed in (("shift_fill", SHIFT_FILLS), ("attention_impl", ATTENTION_IMPLS)):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"unknown {name} {getattr(self, name)!r}: use one of {', '.join(allowed)}"
                )
        levels = parse_structure(self.structure)  # raises with a message saying what to change
        if levels[-1].total_factor > self.max_length:
            # Each level pads its input to a multiple of its factor: a factor beyond the longest
            # window pads every window to the factor, and the level sees only its first token.
            raise ValueError(
                f"structure {self.structure!r} shortens by {levels[-1].total_factor:,}, more than "
                f"max_length={self.max_length:,}: every window would be padded to "
                f"{levels[-1].total_factor:,} positions and its innermost level would see only "
                "the first token; use shortening factors up to max_length (or raise max_length)"
            )

    @property
    def levels(self) -> list[LevelSpec]:
        return parse_structure(self.structure)


class HourglassLevel(nn.Module):
    """One resolution of the hourglass, holding the next (shorter) one as ``inner``.

    Steps, in order (each a separate attribute, so a cached decoder can run them one by one):
    ``pre_blocks`` -> keep residual -> ``pad_to_multiple`` -> ``shift`` -> ``shorten`` ->
    ``inner`` -> ``upsample`` (crop, add residual) -> ``post_blocks``. The innermost level has only
    ``pre_blocks`` (``inner``, ``shift``, ``shorten``, ``upsample`` are ``None``).

    ``forward(x, capture=None)``: x ``(batch, n, d_model)`` -> ``(batch, n, d_model)``.
    Positions inside the level are ``arange(n)`` (level-local; see blocks.py).
    """

    def __init__(self, config: HourglassConfig, index: int, rotary: RotaryEmbedding):
        super().__init__()
        spec = config.levels[index]
        self.index = index
        self.name = f"level{index}"
        self.rotary = rotary  # shared by every level (no weights, only its frequencies)
        self.factor = spec.factor
        self.total_factor = spec.total_factor
        self.disable_shift = config.unsafe_disable_shift
        width = config.feed_forward_width

        def block():
            return TransformerBlock(config.d_model, config.n_heads, width, dropout=config.dropout,
                                    rotary=rotary, attention_impl=config.attention_impl)

        self.pre_blocks = nn.ModuleList(block() for _ in range(spec.pre_layers))
        self.post_blocks = nn.ModuleList(block() for _ in range(spec.post_layers))
        if spec.factor is None:
            self.shift = self.shorten = self.inner = self.upsample = None
        else:
            self.shift = ShiftRight(spec.factor, config.d_model,
                                    learned=config.shift_fill == "learned")
            self.shorten = resampling_class("shortening", config.shortening).from_config(
                config, spec.factor, rotary)
            self.inner = HourglassLevel(config, index + 1, rotary)
            self.upsample = resampling_class("upsampling", config.upsampling).from_config(
                config, spec.factor, rotary)

    def forward(self, x: torch.Tensor, capture: dict | None = None) -> torch.Tensor:
        name = self.name
        record(capture, f"{name}.input", x)
        # the rotation angles of this level's positions, once for all its blocks
        positions = self.rotary.angles(torch.arange(x.shape[1], device=x.device))
        for j, block in enumerate(self.pre_blocks):
            x = block(x, positions, capture=capture, name=f"{name}.block{j}")
        if self.inner is not None:
            residual = x
            padded = pad_to_multiple(x, self.factor)
            shifted = padded if self.disable_shift else self.shift(padded)
            short = self.shorten(shifted, capture=capture, name=name)
            record(capture, f"{name}.shortened", short)
            short = self.inner(short, capture)
            x = self.upsample(short, residual, capture=capture, name=name)
            record(capture, f"{name}.upsampled", x)
            for j, block in enumerate(self.post_blocks, start=len(self.pre_blocks)):
                x = block(x, positions, capture=capture, name=f"{name}.block{j}")
        record(capture, f"{name}.output", x)
        return x


class HourglassLM(LanguageModel):
    """Character-level Hourglass language model: the shared `LanguageModel` (embedding, final
    norm, head, init, `run_with_cache`) around a body of recursive `HourglassLevel`s.

    ``model(tokens)``: tokens ``(batch, length)`` long, ``1 <= length <= config.max_length``
    -> logits ``(batch, length, vocab_size)``; logits at position ``t`` predict token ``t + 1``
    and depend only on tokens ``<= t`` (tested). Capture names: see the module docstring.
    """

    config_class = HourglassConfig
    comparison_variants = ("transformer", "hourglass")
    small_fields = {"structure": "1@1 1@2 1@1"}

    def __init__(self, config: HourglassConfig):
        super().__init__(config)
        self.hourglass = HourglassLevel(config, 0, self.rotary)
        self.init_weights()

    def new_cache(self):
        """Per-level key/value caches (`hourglass_edu.hourglass_cache`)."""
        return HourglassCache(self)

    @classmethod
    def comparison_config(cls, variant, *, common, n_layers, window):
        """transformer: ``"N@1"``; hourglass: ``"1@1 M@3 1@1"`` with M = 2 * (n_layers - 2)
        (at least 2): the shortened middle layers are cheap, so it gets more, as in the paper."""
        if variant == "transformer":
            return HourglassConfig(**common, structure=f"{n_layers}@1")
        return HourglassConfig(**common, structure=f"1@1 {max(2, 2 * (n_layers - 2))}@3 1@1")

    def body(self, x: torch.Tensor, capture: dict | None) -> torch.Tensor:
        return self.hourglass(x, capture)

    @property
    def levels(self) -> list[HourglassLevel]:
        """The levels, outermost (``level0``) first."""
        levels, level = [], self.hourglass
        while level is not None:
            levels.append(level)
            level = level.inner
        return levels

    def longest_sequence(self, length: int) -> int:
        """The longest sequence a level runs on: a level pads its input to a multiple of its
        shortening factor before it shortens (``ceil(n_i / k_i) * k_i`` positions)."""
        lengths = self.level_lengths(length)
        padded = [-(-n // level.factor) * level.factor
                  for n, level in zip(lengths, self.levels[:-1], strict=False)]
        return max([length, *padded])

    def level_lengths(self, length: int) -> list[int]:
        """Sequence length at each level for ``length`` tokens: ``n_{i+1} = ceil(n_i / k_i)``."""
        lengths = [length]
        for level in self.levels[:-1]:
            lengths.append(-(-lengths[-1] // level.factor))
        return lengths

    def flops_per_token(self, length: int) -> dict[str, float]:
        """Forward useful work (FLOPs) per token at sequence ``length``: ``{"level0": ..., ...,
        "head": ..., "total": ...}``. A level includes its blocks and its own shortening and
        upsampling. Counting rule (useful work, not executed work) in the module docstring."""
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive integer, got {length!r}")
        config = self.config
        d, d_ff = config.d_model, config.feed_forward_width
        # each kind counts its own work; a kind not in resampling.py's tables is refused
        shortening = resampling_class("shortening", config.shortening)
        upsampling = resampling_class("upsampling", config.upsampling)
        per_vector_block = 2 * (4 * d * d) + 2 * (2 * d * d_ff)  # q, kv, out + feed-forward
        flops: dict[str, float] = {}
        for level, n in zip(self.levels, self.level_lengths(length), strict=True):
            n_blocks = len(level.pre_blocks) + len(level.post_blocks)
            level_flops = n_blocks * (n * per_vector_block + 4 * d * n * (n + 1) / 2)
            if level.inner is not None:
                level_flops += shortening.flops(config, n, level.factor)
                level_flops += upsampling.flops(config, n, level.factor)
            flops[level.name] = level_flops / length
        flops["head"] = 2 * d * config.vocab_size
        flops["total"] = sum(flops.values())
        return flops


def without_shift(model: HourglassLM) -> HourglassLM:
    """A copy of an HourglassLM with the same weights but the k-1 shift switched off.

    Flips the config's `unsafe_disable_shift`. For teaching only: the copy leaks the future (see
    `analysis.dependency_matrix` / `viz.plot_dependency`).
    """
    config = dataclasses.replace(model.config, unsafe_disable_shift=True)
    leaky = type(model)(config)
    leaky.load_state_dict(model.state_dict())
    return leaky.to(model_device(model)).train(model.training)

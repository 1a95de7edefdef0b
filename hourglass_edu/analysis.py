"""Inspecting a trained model: `inspect_text` / `Inspection` (what each level holds), PCA, bytes.

No drawing here: every function returns tensors or plain data, which `viz` turns into figures.

- `pooled_spans`: which full-resolution characters each position of each shortened level holds,
  accounting for the k-1 shift (with factor k, shortened position i pools the shifted positions
  i*k-(k-1) ... i*k; positions before the start hold the shift fill and contribute no character).
- `dependency_matrix` (from `hourglass_edu.dependency`): how strongly each output position depends
  on each input position (a causal model gives a lower-triangular matrix).
- `inspect_text` -> `Inspection`: one forward pass with every capture point recorded, plus the
  labels that say which characters each position of each level holds. The attention,
  activation, PCA and residual figures all read from it, so a widget can redraw a different head
  or level without running the model again.
- `principal_components`: exact PCA of a level's hidden states.
- `model_levels`, `token_chars`: a model's level layout; one display character per token.
- `saved_activation_bytes`: the activations autograd keeps for the backward pass.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from hourglass_edu.dependency import dependency_matrix
from hourglass_edu.glyphs import EOT_GLYPH, span_label
from hourglass_edu.lm import eval_mode, model_device

__all__ = [
    "Inspection",
    "dependency_matrix",
    "inspect_text",
    "pooled_spans",
    "principal_components",
    "token_chars",
]

# ---------------------------------------------------------------------------------------------
# Which characters each shortened position pools
# ---------------------------------------------------------------------------------------------


def pooled_spans(length: int, factors: Sequence[int], shift: bool = True) -> list[list[range]]:
    """For every level and position, the full-resolution positions whose characters it holds.

    Args:
        length: number of full-resolution positions (level 0).
        factors: shortening factor of each level relative to the one outside it, outermost
            first (for `"2@1 8@3 2@1"` this is `[3]`; for `"2@1 2@2 4@8 2@2 2@1"` it is `[2, 4]`).
        shift: whether each shortening is preceded by the k-1 right shift (the causal model).

    Returns:
        `spans[level][position]` is a `range` of level-0 positions (empty when the position holds
        only shift fill or end padding). Level 0 is `[range(t, t + 1) for t in range(length)]`;
        level i has `ceil(previous_length / k)` positions.
    """
    if length < 1:
        raise ValueError(f"length must be at least 1, got {length}")
    for factor in factors:
        if int(factor) != factor or factor < 1:
            raise ValueError(f"shortening factors must be positive integers, got {list(factors)}")
    spans = [[range(t, t + 1) for t in range(length)]]
    for factor in factors:
        outer = spans[-1]
        inner = []
        for position in range(math.ceil(len(outer) / factor)):
            # With the shift, slot j of the shifted sequence holds outer position j - (k-1).
            first = position * factor - (factor - 1 if shift else 0)
            members = [q for q in range(first, first + factor) if 0 <= q < len(outer)]
            members = [q for q in members if len(outer[q])]
            if members:
                inner.append(range(outer[members[0]].start, outer[members[-1]].stop))
            else:
                inner.append(range(0))
        spans.append(inner)
    return spans


# ---------------------------------------------------------------------------------------------
# Looking inside a model: one captured forward pass
# ---------------------------------------------------------------------------------------------


def model_levels(model) -> tuple[list[int], list[int], list[int], bool]:
    """`(factors, pre_blocks, post_blocks, shift)` of an HourglassLM, read from its config.

    `factors[i]` is how much level i+1 shortens level i; `shift` is False only for a model built
    with `unsafe_disable_shift=True` (the leak demonstration).
    """
    config = getattr(model, "config", None)
    levels = getattr(config, "levels", None)
    if levels is None:
        raise ValueError("expected an HourglassLM (a model whose .config has .levels)")
    factors = [spec.factor for spec in levels[:-1]]
    pre = [spec.pre_layers for spec in levels]
    post = [spec.post_layers for spec in levels]
    shift = not getattr(config, "unsafe_disable_shift", False)
    return factors, pre, post, shift



def token_chars(tokenizer, ids: Sequence[int]) -> list[str]:
    """One display character per token id (`EOT_GLYPH` for the end-of-text token)."""
    chars = []
    for token in ids:
        if token == tokenizer.eot_id:
            chars.append(EOT_GLYPH)
        else:
            chars.append(tokenizer.decode([int(token)]))
    return chars


@dataclass
class Inspection:
    """One forward pass of an HourglassLM on a text, with every capture point recorded.

    Attributes:
        text: the text as given; the model sees `<eot>` + text (the start of a document).
        tokens: `(length,)` token ids, `<eot>` first.
        chars: one display character per token.
        factors, pre_blocks, post_blocks, shift: the model's level layout.
        spans: `spans[level][position]`: the level-0 positions whose characters it holds.
        labels: `labels[level][position]`: those characters, for tick labels.
        cache: capture name -> tensor with the batch dimension removed (float, CPU).
        logits: `(length, vocab)`.
    """

    text: str
    tokens: torch.Tensor
    chars: list[str]
    factors: list[int]
    pre_blocks: list[int]
    post_blocks: list[int]
    shift: bool
    spans: list[list[range]]
    labels: list[list[str]]
    cache: dict[str, torch.Tensor] = field(repr=False)
    logits: torch.Tensor = field(repr=False)

    @property
    def n_levels(self) -> int:
        return len(self.factors) + 1

    def blocks(self, level: int) -> int:
        """Number of transformer blocks at a level (pre blocks first, then post blocks)."""
        self._check_level(level)
        return self.pre_blocks[level] + self.post_blocks[level]

    def heads(self) -> int:
        for name, value in self.cache.items():
            if name.endswith(".attn"):
                return value.shape[0]
        raise ValueError("no attention weights were captured: this model has no attention "
                         "capture points (run_with_cache records `.attn` weights of every "
                         "attention layer, whatever its attention_impl)")

    def get(self, name: str) -> torch.Tensor:
        if name not in self.cache:
            known = ", ".join(sorted(self.cache)[:12])
            raise ValueError(f"no capture named {name!r}; known names include: {known} ...")
        return self.cache[name]

    def hidden(self, level: int, point: str = "output") -> torch.Tensor:
        """`(length_at_level, dim)` hidden states: point is 'input', 'output' or 'block{j}'."""
        self._check_level(level)
        return self.get(f"level{level}.{point}")

    def residual(self, level: int) -> torch.Tensor:
        """What a level keeps for the residual before shortening: its last pre block's output."""
        pre = self.pre_blocks[level]
        return self.hidden(level, f"block{pre - 1}" if pre else "input")

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.n_levels:
            raise ValueError(f"level must be in 0..{self.n_levels - 1}, got {level}")


@torch.no_grad()
def inspect_text(model, tokenizer, text: str) -> Inspection:
    """Run `model.run_with_cache` on `<eot>` + text and collect what the figures need."""
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty string")
    factors, pre, post, shift = model_levels(model)
    try:
        ids = [tokenizer.eot_id, *tokenizer.encode(text)]
    except ValueError as error:
        raise ValueError(
            f"the text has characters the model's vocabulary lacks: {error}"
        ) from error
    limit = getattr(model.config, "max_length", None)
    if limit is not None and len(ids) > limit:
        raise ValueError(f"text is {len(ids) - 1} characters; the model takes at most {limit - 1}")
    tokens = torch.tensor(ids, dtype=torch.long)
    with eval_mode(model):
        logits, cache = model.run_with_cache(tokens[None].to(model_device(model)))
    cache = {name: value[0].detach().float().cpu() for name, value in cache.items()}
    chars = token_chars(tokenizer, ids)
    spans = pooled_spans(len(ids), factors, shift=shift)
    for level, level_spans in enumerate(spans):
        captured = cache.get(f"level{level}.input")
        if captured is not None and captured.shape[0] != len(level_spans):
            raise RuntimeError(
                f"level {level} has {captured.shape[0]} positions but the labels expect "
                f"{len(level_spans)}: the model's shortening differs from pooled_spans"
            )
    labels = [[span_label(chars, span) for span in level] for level in spans]
    return Inspection(
        text,
        tokens,
        chars,
        factors,
        pre,
        post,
        shift,
        spans,
        labels,
        cache,
        logits[0].detach().float().cpu(),
    )


def principal_components(points: torch.Tensor, count: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Project `(n, dim)` points onto their top principal components (exact, via SVD).

    Returns `(projected (n, count), explained variance fraction (count,))`. Signs are fixed so
    that each component's largest loading is positive, which makes the picture reproducible.
    """
    if points.dim() != 2 or points.shape[0] < 2:
        raise ValueError(f"need at least 2 points of shape (n, dim), got {tuple(points.shape)}")
    centred = points.double() - points.double().mean(0)
    _, singular, directions = torch.linalg.svd(centred, full_matrices=False)
    directions = directions[:count]  # (count, dim)
    largest = directions.abs().argmax(dim=1)
    signs = torch.sign(directions[torch.arange(len(directions)), largest])
    directions = directions * signs[:, None]
    variance = singular.pow(2)
    explained = variance[:count] / variance.sum().clamp_min(1e-30)
    projected = centred @ directions.T
    if projected.shape[1] < count:  # fewer points/dims than components: pad with zeros
        pad = count - projected.shape[1]
        projected = torch.cat([projected, projected.new_zeros(len(projected), pad)], 1)
        explained = torch.cat([explained, explained.new_zeros(pad)])
    return projected.float(), explained.float()


# ---------------------------------------------------------------------------------------------
# Memory: what the backward pass keeps
# ---------------------------------------------------------------------------------------------


def saved_activation_bytes(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    context=None,
    targets: torch.Tensor | None = None,
) -> int:
    """Bytes autograd keeps for the backward pass of `model(tokens)` (parameters excluded).

    Every tensor autograd saves is counted through saved-tensor hooks, each storage once.
    `context` (an autocast context, for example) wraps the forward pass. With `targets`, the
    cross-entropy of the logits (in float32) against them is computed inside it too, as in a
    training step, so what the loss keeps counts as well.
    """
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with context if context is not None else contextlib.nullcontext():
            logits = model(tokens)
            if targets is not None:
                torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    return sum(storages.values())

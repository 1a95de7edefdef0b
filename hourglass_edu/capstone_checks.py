"""The checks of notebook 11 (the capstone): each piece a learner writes, held to the library's.

Every check runs in stages and stops at the first that fails: the **shape**, then **causality**
(a perturbation check on one random sequence: change the input at one position and watch which
outputs move; it checks, it does not prove), then **equality** with the library's piece after
copying the library's weights in (``copy_weights`` with the renames below). A check prints one
line per stage, ``✓`` or ``✗`` with what to look at, and returns ``True`` or ``False``; it never
raises, so a notebook with pieces still to write runs to its end. A piece not written yet raises
``NotImplementedError("fill in NAME above")`` and its check says "not written yet: fill in NAME
above" instead of a traceback.

Equality is measured as the largest absolute difference, against ``TOLERANCE`` (``1e-5`` in
float32): the same arithmetic in a different order (another einsum, another kernel) differs by a
few roundings of ~1e-7 each, while a real mistake (a pair rotated the wrong way, a shift off by
one, a missing residual) moves outputs by 1e-2 or more.
"""

from __future__ import annotations

import torch

from hourglass_edu.attention import MultiHeadAttention, funnel_down_mask
from hourglass_edu.blocks import RotaryEmbedding, TransformerBlock
from hourglass_edu.hourglass import parse_structure
from hourglass_edu.resampling import AvgShortening, RepeatUpsampling, pad_to_multiple, shift_right

__all__ = [
    "RENAMES",
    "TOLERANCE",
    "check_attention",
    "check_attention_level",
    "check_attention_model",
    "check_block",
    "check_funnel_attention",
    "check_funnel_down",
    "check_funnel_up",
    "check_level",
    "check_levels_of",
    "check_mean_shorten",
    "check_model",
    "check_pad_and_shift",
    "check_repeat_upsample",
    "check_rotary",
    "check_shortening_mask",
    "check_training_loop",
    "copy_weights",
    "my_name",
]

from hourglass_edu.capstone_loop import check_training_loop
from hourglass_edu.capstone_masks import check_shortening_mask
from hourglass_edu.capstone_stages import (  # noqa: F401 - the stages the checks run
    _D_MODEL,
    _N_HEADS,
    _NOT_THE_LEARNERS,
    _STRUCTURE,
    RENAMES,
    TOLERANCE,
    CheckFailed,
    _build,
    _change_token,
    _change_vector,
    _check_level,
    _check_model,
    _expect_causal,
    _expect_equal,
    _expect_shape,
    _library_model,
    _randn,
    _randomized,
    _renamer,
    _run,
    _where,
    copy_weights,
    my_name,
)


def check_rotary(my_rotary) -> bool:
    """`my_rotary(x, positions)`: x (batch, heads, n, d_head), positions (n,) -> x's shape."""
    x, positions = _randn(2, 3, 7, 8), torch.arange(7) * 3 + 2   # any integers, not just 0..n-1
    state = {}

    def shape():
        state["got"] = my_rotary(x, positions)
        return _expect_shape(state["got"], x.shape, "my_rotary(x, positions)")

    def equal():
        return _expect_equal(state["got"], RotaryEmbedding(8)(x, positions),
                             "rotate the pair (x[i], x[i + d/2]) by position * frequency[i], "
                             "with the frequencies of rotary_inverse_frequencies(d)")

    def relative():
        # Rotary scores depend only on the distance: shifting every position by 5 changes none.
        q, k = _randn(1, 1, 7, 8, seed=1), _randn(1, 1, 7, 8, seed=2)
        scores = my_rotary(q, positions) @ my_rotary(k, positions).transpose(-1, -2)
        moved = my_rotary(q, positions + 5) @ my_rotary(k, positions + 5).transpose(-1, -2)
        return _expect_equal(moved, scores, "scores should depend on position differences only",
                             "|scores at positions + 5 - scores|")

    return _run("my_rotary", [("shape", shape), ("equal to RotaryEmbedding", equal),
                              ("scores depend only on distances", relative)])


def check_attention(Attention) -> bool:  # noqa: N803 - the class the learner wrote
    """`Attention(d_model, n_heads)`: (batch, n, d_model) -> (batch, n, d_model), causal."""
    x = _randn(2, 11, _D_MODEL)
    state = {}

    def shape():
        state["mine"] = _build(lambda: Attention(_D_MODEL, _N_HEADS), "Attention(d_model, n_heads)")
        with torch.no_grad():
            return _expect_shape(state["mine"](x), x.shape, "attention(x)")

    def causal():
        return _expect_causal(state["mine"], x[:1], lambda s: s,
                              "use is_causal=True (or a causal mask) in the attention")

    def equal():
        library = _randomized(MultiHeadAttention(_D_MODEL, _N_HEADS,
                                                 rotary=RotaryEmbedding(_D_MODEL // _N_HEADS)))
        copy_weights(library, state["mine"], _renamer(".attn.", ".attn."))
        with torch.no_grad():
            expected, _ = library(x, causal=True)
            return _expect_equal(state["mine"](x), expected,
                                 "keys are the first d outputs of kv, values the last d; rotate "
                                 "queries and keys (not values) after splitting the heads")

    return _run("Attention", [("shape", shape), ("causality", causal),
                              ("equal to MultiHeadAttention", equal)])


def check_block(Block) -> bool:  # noqa: N803
    """`Block(d_model, n_heads)`: pre-norm block, (batch, n, d_model) -> same, causal."""
    x = _randn(2, 11, _D_MODEL)
    state = {}

    def shape():
        state["mine"] = _build(lambda: Block(_D_MODEL, _N_HEADS), "Block(d_model, n_heads)")
        with torch.no_grad():
            return _expect_shape(state["mine"](x), x.shape, "block(x)")

    def causal():
        return _expect_causal(state["mine"], x[:1], lambda s: s,
                              "the attention inside is not causal")

    def equal():
        d_head = _D_MODEL // _N_HEADS
        library = _randomized(TransformerBlock(_D_MODEL, _N_HEADS, 4 * _D_MODEL,
                                               rotary=RotaryEmbedding(d_head)))
        copy_weights(library, state["mine"], _renamer(".", "."))
        with torch.no_grad():
            return _expect_equal(state["mine"](x), library(x, torch.arange(x.shape[1])),
                                 "x + attn(norm1(x)), then x + mlp(norm2(x)): the norm inside "
                                 "each branch, the residual stream itself never normalised")

    return _run("Block", [("shape", shape), ("causality", causal),
                          ("equal to TransformerBlock", equal)])


def check_pad_and_shift(pad_and_shift) -> bool:
    """`pad_and_shift(x, k)`: (batch, n, d) -> (batch, ceil(n / k) * k, d)."""
    x = _randn(2, 11, 4)

    def shape():
        for k in (2, 3):
            _expect_shape(pad_and_shift(x, k), (2, -(-11 // k) * k, 4), f"pad_and_shift(x, k={k})")
        return "(batch, ceil(n / k) * k, d)"

    def equal():
        for k in (2, 3, 11):
            expected = shift_right(pad_to_multiple(x, k), k - 1)
            _expect_equal(pad_and_shift(x, k), expected,
                          f"k={k}: pad with zeros at the end first, then prepend k - 1 zero "
                          "vectors and drop as many at the end")
        return "pad first, then shift by k - 1"

    return _run("pad_and_shift", [("shape", shape), ("equal to pad_to_multiple + shift_right",
                                                     equal)])


def check_mean_shorten(mean_shorten, pad_and_shift) -> bool:
    """`mean_shorten(shifted, k)`: (batch, m, d) with m a multiple of k -> (batch, m / k, d)."""
    x = _randn(2, 11, 4)

    def shape():
        return _expect_shape(mean_shorten(pad_and_shift(x, 3), 3), (2, 4, 4),
                             "mean_shorten(pad_and_shift(x, 3), 3)")

    def causal():
        for k in (2, 3):
            _expect_causal(lambda x, k=k: mean_shorten(pad_and_shift(x, k), k), x[:1],
                           lambda s, k=k: -(-s // k),
                           f"k={k}: short vector i may hold inputs up to i * k only")
        return "short vector i holds no input after i * k (one sequence)"

    def equal():
        shifted = pad_and_shift(x, 3)
        return _expect_equal(mean_shorten(shifted, 3), AvgShortening(3)(shifted),
                             "the mean of each group of k consecutive vectors")

    return _run("mean_shorten", [("shape", shape), ("causality", causal),
                                 ("equal to AvgShortening", equal)])


def check_repeat_upsample(repeat_upsample) -> bool:
    """`repeat_upsample(short, residual, k)`: (batch, m, d), (batch, n, d) -> (batch, n, d)."""
    short, residual = _randn(2, 4, 4), _randn(2, 11, 4, seed=1)

    def shape():
        return _expect_shape(repeat_upsample(short, residual, 3), residual.shape,
                             "repeat_upsample(short, residual, 3)")

    def equal():
        return _expect_equal(repeat_upsample(short, residual, 3),
                             RepeatUpsampling(3)(short, residual),
                             "repeat each short vector k times, crop to n, add the residual")

    return _run("repeat_upsample", [("shape", shape), ("equal to RepeatUpsampling", equal)])


def check_levels_of(levels_of) -> bool:
    """`levels_of(structure)` -> [(pre, post, k), ...], outermost first, the innermost k None."""
    structures = [_STRUCTURE, "2@1 8@3 2@1", "12@1", "3@1 8@3 1@1", "1@1 1@2 1@4 2@8 1@4 1@2 1@1"]

    def equal():
        for structure in structures:
            library = [(level.pre_layers, level.post_layers, level.factor)
                       for level in parse_structure(structure)]
            got = levels_of(structure)
            if list(got) != library:
                raise CheckFailed(f"levels_of({structure!r}) gave {got}; parse_structure reads "
                                  f"{len(library)} levels there (k: how much the next level "
                                  "shortens this one)")
        return f"{len(structures)} structures"

    return _run("levels_of", [("equal to parse_structure", equal)])


def check_level(Level) -> bool:  # noqa: N803
    """`Level(levels, d_model, n_heads)`: the recursive level, (batch, n, d) -> (batch, n, d)."""
    return _check_level("Level", lambda levels: Level(levels, _D_MODEL, _N_HEADS),
                        _library_model().hourglass,
                        "pre blocks, residual, pad_and_shift, mean_shorten, inner level, "
                        "repeat_upsample with the residual, post blocks")


def check_model(MyHourglass, device="cpu") -> bool:  # noqa: N803
    """`MyHourglass(vocab_size, d_model, n_heads, structure)`: tokens (batch, n) -> logits."""
    return _check_model("MyHourglass",
                        lambda: MyHourglass(23, _D_MODEL, _N_HEADS, _STRUCTURE),
                        _randomized(_library_model()), device)


# ---- the extension: attention shortening and upsampling -----------------------------------------


def check_funnel_attention(FunnelAttention) -> bool:  # noqa: N803
    """`FunnelAttention(d_model, n_heads)(queries, keys_values, query_positions, key_positions,
    mask)`: (batch, nq, d), (batch, nk, d), (nq,), (nk,), bool (nq, nk) -> (batch, nq, d)."""
    k, short_length, full_length = 3, 4, 12
    queries = _randn(2, short_length, _D_MODEL)
    keys_values = _randn(2, full_length, _D_MODEL, seed=1)
    query_positions = torch.arange(short_length) * k
    key_positions = torch.arange(full_length) - (k - 1)
    mask = funnel_down_mask(short_length, full_length, k)
    state = {}

    def run():
        with torch.no_grad():
            return state["mine"](queries, keys_values, query_positions, key_positions, mask)

    def shape():
        state["mine"] = _build(lambda: FunnelAttention(_D_MODEL, _N_HEADS), "FunnelAttention")
        return _expect_shape(run(), queries.shape, "attention(queries, keys_values, ...)")

    def equal():
        library = _randomized(MultiHeadAttention(_D_MODEL, _N_HEADS,
                                                 rotary=RotaryEmbedding(_D_MODEL // _N_HEADS)))
        copy_weights(library, state["mine"], _renamer(".attn.", ".attn."))
        with torch.no_grad():
            expected, _ = library(queries, keys_values, query_positions=query_positions,
                                  key_positions=key_positions, mask=mask)
        return _expect_equal(run(), expected,
                             "queries from the first argument, keys and values from the second, "
                             "each rotated by its own positions; the mask as SDPA's attn_mask")

    return _run("FunnelAttention", [("shape", shape), ("equal to MultiHeadAttention", equal)])


def _attention_level():
    return _library_model(shortening="attention", upsampling="attention").hourglass


def check_funnel_down(FunnelDown) -> bool:  # noqa: N803
    """`FunnelDown(d_model, n_heads, k)(shifted)`: (batch, m, d) -> (batch, m / k, d)."""
    shifted = _randn(2, 12, _D_MODEL)
    state = {}

    def shape():
        state["mine"] = _build(lambda: FunnelDown(_D_MODEL, _N_HEADS, 2), "FunnelDown")
        with torch.no_grad():
            return _expect_shape(state["mine"](shifted), (2, 6, _D_MODEL), "shorten(shifted)")

    def causal():
        return _expect_causal(state["mine"], shifted[:1], lambda s: s // 2,
                              "use your shortening_mask (section 7.2) as the attention mask")

    def equal():
        library = _randomized(_attention_level().shorten)
        copy_weights(library, state["mine"], _renamer(".", "."))
        with torch.no_grad():
            return _expect_equal(state["mine"](shifted), library(shifted),
                                 "queries at i * k, keys at s - (k - 1); pooled + attention, "
                                 "then + mlp(norm2(.))")

    return _run("FunnelDown", [("shape", shape), ("causality", causal),
                               ("equal to AttentionShortening", equal)])


def check_funnel_up(FunnelUp) -> bool:  # noqa: N803
    """`FunnelUp(d_model, n_heads, k)(short, residual)`: (b, m, d), (b, n, d) -> (b, n, d)."""
    short, residual = _randn(2, 6, _D_MODEL), _randn(2, 11, _D_MODEL, seed=1)
    state = {}

    def shape():
        state["mine"] = _build(lambda: FunnelUp(_D_MODEL, _N_HEADS, 2), "FunnelUp")
        with torch.no_grad():
            return _expect_shape(state["mine"](short, residual), residual.shape,
                                 "upsample(short, residual)")

    def causal():
        _expect_causal(lambda r: state["mine"](short[:1], r), residual[:1], lambda s: s,
                       "full position j may read residual positions <= j only")
        _expect_causal(lambda x: state["mine"](x, residual[:1]), short[:1], lambda m: m * 2,
                       "full query j may see short keys m <= j // k only")
        return "no output moved when a later residual or short vector changed (one sequence)"

    def equal():
        library = _randomized(_attention_level().upsample)
        copy_weights(library, state["mine"], _renamer(".", "."))
        with torch.no_grad():
            return _expect_equal(state["mine"](short, residual), library(short, residual),
                                 "x = residual + repeat(short), queries at j, keys at m * k; "
                                 "x + attention, then + mlp(norm2(.))")

    return _run("FunnelUp", [("shape", shape), ("causality", causal),
                             ("equal to AttentionUpsampling", equal)])


def check_attention_level(AttentionLevel) -> bool:  # noqa: N803
    """`AttentionLevel(levels, d_model, n_heads)`: a Level that resamples by attention."""
    return _check_level("AttentionLevel",
                        lambda levels: AttentionLevel(levels, _D_MODEL, _N_HEADS),
                        _attention_level(),
                        "pad_and_shift, then self.shorten(shifted); self.upsample(short, residual)",
                        shift_flag=False)  # section 4's switch is the averaging Level's


def check_attention_model(MyHourglass, AttentionLevel, device="cpu") -> bool:  # noqa: N803
    """MyHourglass(..., level=AttentionLevel) equal to HourglassLM(shortening="attention",
    upsampling="attention")."""
    return _check_model(
        "MyHourglass with AttentionLevel",
        lambda: MyHourglass(23, _D_MODEL, _N_HEADS, _STRUCTURE, level=AttentionLevel),
        _randomized(_library_model(shortening="attention", upsampling="attention")), device)

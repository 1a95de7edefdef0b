"""Fast tests for the core's contracts that the deliberate-bug table in CONTRIBUTING.md found no
other fast test pinning: each test here failed on the bug it names before it was kept.

They go through the public API where they can (HourglassLM, `train`, the history it returns,
`run_with_cache`); the rotary and init tests also read what they pin where it lives (a level's
blocks, `RotaryEmbedding`, the layers marked `is_residual_output`), and recompute it by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_train_config

from hourglass_edu.blocks import RotaryEmbedding, rotary_inverse_frequencies
from hourglass_edu.training import TrainConfig, train


def tiny_run(steps: int = 3) -> TrainConfig:
    return tiny_train_config(steps=steps, warmup_steps=1, eval_every=steps, eval_batches=1)


# --- bits per character: nats over ln 2 -----------------------------------------------------------


def test_training_history_gives_bits_per_character_as_the_loss_over_ln2(make_tiny_hourglass,
                                                                        toy_data):
    history = train(make_tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data, tiny_run())
    assert len(history) == 3
    for record in history.records:
        assert record["train_bpc"] == pytest.approx(record["train_loss"] / math.log(2), rel=1e-9)


# --- rotary frequencies: RoFormer's theta_i = base^(-2i/d) ---------------------------------------

#: theta_i = 10000^(-2i/8) for i = 0..3, worked out by hand: 10000^(-i/4) = 1, 1/10, 1/100, 1/1000.
THETAS_DIM_8 = [1.0, 0.1, 0.01, 0.001]
#: cos and sin of 3 * theta_i (position 3): angles 3, 0.3, 0.03, 0.003, to 10 decimals (computed
#: with Python's math.cos / math.sin, not torch).
COS_AT_3 = [-0.9899924966, 0.9553364891, 0.9995500337, 0.9999955000]
SIN_AT_3 = [0.1411200081, 0.2955202067, 0.0299955002, 0.0029999955]


def test_rotary_frequencies_are_roformers_base_to_the_minus_2i_over_d(make_tiny_hourglass):
    """The frequencies and the rotation they make, against values written out by hand (dim 8,
    base 10000) and against the formula theta_i = base^(-2i/d) computed here in float64. Feature
    pair (x[i], x[i + d/2]) turns by position * theta_i, counterclockwise (blocks.py)."""
    rotary = RotaryEmbedding(8, base=10000.0)
    assert rotary.inverse_frequency.tolist() == pytest.approx(THETAS_DIM_8, rel=1e-6)
    for dim, base in ((8, 10000.0), (16, 500.0), (64, 10000.0)):
        formula = [base ** (-2 * i / dim) for i in range(dim // 2)]
        assert rotary_inverse_frequencies(dim, base).tolist() == pytest.approx(formula, rel=1e-6)

    position = torch.tensor([3])
    first_of_each_pair = torch.tensor([[[[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]]]])
    second_of_each_pair = torch.tensor([[[[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]]]])
    assert rotary(first_of_each_pair, position)[0, 0, 0].tolist() == pytest.approx(
        COS_AT_3 + SIN_AT_3, abs=1e-6)
    assert rotary(second_of_each_pair, position)[0, 0, 0].tolist() == pytest.approx(
        [-s for s in SIN_AT_3] + COS_AT_3, abs=1e-6)
    # the model's rotary is this one, with the config's base and head dimension
    model = make_tiny_hourglass(rotary_base=500.0)  # d_model 32, 2 heads: head dimension 16
    assert model.rotary.inverse_frequency.tolist() == pytest.approx(
        [500.0 ** (-2 * i / 16) for i in range(8)], rel=1e-6)


# --- rotary positions: level-local at every level ------------------------------------------------


def rotary_attention_weights(block, x, positions):
    """A block's causal self-attention weights over its input x, its queries and keys rotated
    by the explicit `positions`: what the block computes when its level passes these."""
    normed = block.attn_norm(x)
    queries = block.attn.queries(normed, positions)
    keys, _ = block.attn.keys_values(normed, positions)
    scores = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])
    future = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def test_each_level_rotates_by_arange_of_its_own_length(make_tiny_hourglass):
    """Every block at every level of a 3-level hourglass attends as if its queries and keys sat
    at positions 0, 1, ..., n - 1 of that level (level-local, blocks.py), not at token positions
    (0, k, 2k, ... with k the level's total factor): each block's captured attention weights are
    recomputed from its input with explicit positions."""
    model = make_tiny_hourglass(structure="1@1 1@2 1@4 1@2 1@1").eval()
    inputs, blocks, level, index = {}, {}, model.hourglass, 0
    while level is not None:
        for j, block in enumerate([*level.pre_blocks, *level.post_blocks]):
            name = f"level{index}.block{j}"
            blocks[name] = (block, level.total_factor)
            block.register_forward_pre_hook(
                lambda _, args, name=name: inputs.__setitem__(name, args[0].detach()))
        level, index = level.inner, index + 1
    tokens = torch.randint(0, 11, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, capture = model.run_with_cache(tokens)
        lengths = {name: inputs[name].shape[1] for name in blocks}
        assert lengths == {"level0.block0": 16, "level0.block1": 16, "level1.block0": 8,
                           "level1.block1": 8, "level2.block0": 4}
        for name, (block, total_factor) in blocks.items():
            level_local = torch.arange(lengths[name])
            torch.testing.assert_close(capture[f"{name}.attn"],
                                       rotary_attention_weights(block, inputs[name], level_local))
            if total_factor > 1:  # the test can tell the two apart at the shortened levels
                in_tokens = rotary_attention_weights(block, inputs[name],
                                                     level_local * total_factor)
                assert (capture[f"{name}.attn"] - in_tokens).abs().max() > 1e-3, name


# --- the residual-branch init -----------------------------------------------------------------


def test_a_fresh_model_has_the_init_its_docstring_promises(make_tiny_hourglass):
    """LanguageModel.init_weights: Linear weights ~ N(0, 0.02), biases 0, and each linear layer
    marked as a residual branch's output at 0.02 / sqrt(R) for R such layers (R even). Here
    `2@1 2@2 2@1` with attention resampling: 6 blocks and 2 resampling layers, each with an
    attention output and a feed-forward output, so R = 16 and the std is 0.02 / 4 = 0.005.

    The sample std of N normal draws has a relative standard error of 1 / sqrt(2N): 0.2% for
    the 163,840 residual-output weights together, 1.1% for the smallest matrix (64 x 64); the
    test allows 6 standard errors. Without the scaling the std would be 0.02 (4 times larger)."""
    model = make_tiny_hourglass(d_model=64, d_ff=256, structure="2@1 2@2 2@1",
                                shortening="attention", upsampling="attention")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    residual = [m.weight for m in linears if getattr(m, "is_residual_output", False)]
    others = [m.weight for m in linears if not getattr(m, "is_residual_output", False)]
    assert len(residual) == 16

    def assert_normal(weights, std):
        count = weights.numel()
        tolerance = 6 * std / math.sqrt(2 * count)
        assert abs(weights.std().item() - std) <= tolerance, (weights.std().item(), std)
        assert abs(weights.mean().item()) <= 6 * std / math.sqrt(count)

    assert_normal(torch.cat([w.flatten() for w in residual]), 0.005)
    for weight in residual:
        assert_normal(weight.detach().flatten(), 0.005)
    assert_normal(torch.cat([w.flatten() for w in others]).detach(), 0.02)
    assert all((m.bias == 0).all() for m in linears if m.bias is not None)

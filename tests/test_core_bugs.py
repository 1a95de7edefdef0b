"""Fast tests for the core's contracts that the deliberate-bug table in CONTRIBUTING.md found no
other fast test pinning: each test here failed on the bug it names before it was kept.

They go through the public API only (HourglassLM, train, evaluate_bpc, next_token_probabilities),
so a refactoring of the code underneath leaves them standing.
"""

from __future__ import annotations

import math

import pytest
import torch

from hourglass_edu.sampling import next_token_probabilities
from hourglass_edu.training import TrainConfig, evaluate_bpc, train


def tiny_run(steps: int = 3) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=4, block_size=32, lr=3e-3, warmup_steps=1,
                       eval_every=steps, eval_batches=1, log_every=1, precision="fp32",
                       progress=False, device="cpu")


# --- bits per character: nats over ln 2 -----------------------------------------------------------


def test_a_uniform_model_scores_log2_of_its_vocabulary_in_bits(make_tiny_hourglass):
    """Logits all equal: every target costs ln(V) nats, which is log2(V) bits, whatever the text."""
    vocab = 13
    model = make_tiny_hourglass(vocab).eval()
    with torch.no_grad():
        model.head.weight.zero_()
    ids = torch.randint(0, vocab, (200,), generator=torch.Generator().manual_seed(0))
    assert evaluate_bpc(model, ids, batch_size=2, block_size=32) == pytest.approx(
        math.log2(vocab), rel=1e-6)


def test_training_history_gives_bits_per_character_as_the_loss_over_ln2(make_tiny_hourglass,
                                                                        toy_data):
    history = train(make_tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data, tiny_run())
    assert len(history) == 3
    for record in history.records:
        assert record["train_bpc"] == pytest.approx(record["train_loss"] / math.log(2), rel=1e-9)


# --- top-k and top-p: exactly the promised set ----------------------------------------------------


@pytest.mark.parametrize("top_k", [1, 2, 3, 5])
def test_top_k_keeps_exactly_the_k_most_likely_tokens(top_k):
    logits = torch.tensor([0.5, 3.0, -1.0, 2.0, 1.0])  # ranks: 1, 3, 4, 0, 2
    probabilities = next_token_probabilities(logits, top_k=top_k)
    kept = torch.argsort(logits, descending=True)[:top_k]
    assert set(torch.nonzero(probabilities).flatten().tolist()) == set(kept.tolist())
    assert probabilities[kept].tolist() == pytest.approx(
        torch.softmax(logits[kept], dim=-1).tolist())


@pytest.mark.parametrize("top_p, kept", [(0.25, 1), (0.3, 2), (0.5, 2), (0.51, 3), (0.75, 3),
                                         (0.76, 4), (1.0, 4)])
def test_top_p_keeps_the_smallest_set_whose_mass_reaches_p(top_p, kept):
    """Four equally likely tokens (exactly 1/4 each): the smallest set holding at least `top_p`
    of the mass has ceil(4 * top_p) tokens -- the token that reaches p is kept, no more."""
    probabilities = next_token_probabilities(torch.zeros(4), top_p=top_p)
    assert sorted(probabilities.tolist(), reverse=True) == pytest.approx(
        [1 / kept] * kept + [0.0] * (4 - kept))

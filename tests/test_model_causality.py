"""The hourglass never looks at the future: a property test over random models, and its control.

Two checks, on random structures, lengths and weights:
* perturbation: changing the token at position j must not move any logit before j;
* prefixes: the last logit of the run on tokens[:L] equals the full run's logit at L - 1 (so the
  prediction for a position never depends on how long the sequence goes on).
The negative control switches the k-1 shift off and expects the same checks to find a leak.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import mirrored_structures
from tiny import tiny_hourglass

VOCAB = 7
TOLERANCE = 1e-5
COMBOS = list(itertools.product(("avg", "linear", "attention"), ("repeat", "linear", "attention"),
                                ("zeros", "learned")))


def build(structure, shortening, upsampling, shift_fill, seed, **overrides):
    return tiny_hourglass(VOCAB, seed=seed, d_model=16, structure=structure,
                          shortening=shortening, upsampling=upsampling, shift_fill=shift_fill,
                          d_ff=32, max_length=128, **overrides).eval()




@torch.inference_mode()
def causality_errors(model, tokens, check_prefixes=True) -> tuple[float, float]:
    """(largest move of a logit before a changed token, largest prefix-vs-full mismatch).

    tokens: ``(1, n)``. All n perturbations run as one batch: row j changes token j.
    """
    n = tokens.shape[1]
    full = model(tokens)[0]  # (n, vocab)
    perturbed = tokens.repeat(n, 1)
    index = torch.arange(n)
    perturbed[index, index] = (perturbed[index, index] + 1 + index % (VOCAB - 1)) % VOCAB
    moved = (model(perturbed) - full).abs().amax(dim=-1)  # (row j, position p)
    before_changed = index[None, :] < index[:, None]  # position p < j
    perturbation_error = moved[before_changed].max().item() if n > 1 else 0.0
    if not check_prefixes:
        return perturbation_error, 0.0
    prefix_error = max(
        (model(tokens[:, :length])[0, -1] - full[length - 1]).abs().max().item()
        for length in range(1, n + 1)
    )
    return perturbation_error, prefix_error


@pytest.mark.parametrize("shortening,upsampling,shift_fill", COMBOS)
@settings(max_examples=6)
@given(structure=mirrored_structures(), length=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_hourglass_is_causal(shortening, upsampling, shift_fill, structure, length, seed):
    # 18 combinations x 6 examples = 108 random models per run
    model = build(structure, shortening, upsampling, shift_fill, seed)
    tokens = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))
    perturbation_error, prefix_error = causality_errors(model, tokens)
    assert perturbation_error <= TOLERANCE, f"future token moved an earlier logit: {structure}"
    assert prefix_error <= TOLERANCE, f"prefix run disagrees with full run: {structure}"


@settings(max_examples=20)
@given(structure=mirrored_structures(min_levels=2), length=st.integers(2, 70),
       seed=st.integers(0, 2**16), combo=st.sampled_from(COMBOS))
def test_without_shift_the_check_finds_the_leak(structure, length, seed, combo):
    # With >= 2 levels and >= 2 tokens, position 0 reads a group holding token 1: a leak exists.
    model = build(structure, *combo, seed, unsafe_disable_shift=True)
    tokens = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))
    perturbation_error, _ = causality_errors(model, tokens, check_prefixes=False)
    # the positive test's own tolerance: with the shift off, that very check fails
    assert perturbation_error > TOLERANCE, f"leak not detected for {structure} {combo}"

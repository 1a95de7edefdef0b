"""Hypothesis strategies of the property tests: random hourglass structures, random documents.

Two shapes, each the one its tests were written for: `mirrored_structures` gives each level the
same number of blocks on the way in and out (the causality tests), `structures` draws them
independently and allows two (the cached-decoding tests).
"""

from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def structures(draw):
    """Random structures: 1-3 levels, relative factors 2-5, 0-2 blocks around each level."""
    n_levels = draw(st.integers(1, 3))
    factors = [1]
    for _ in range(n_levels - 1):
        factors.append(factors[-1] * draw(st.integers(2, 5)))
    going_in = [f"{draw(st.integers(0, 2))}@{f}" for f in factors[:-1]]
    coming_out = [f"{draw(st.integers(0, 2))}@{f}" for f in reversed(factors[:-1])]
    return " ".join([*going_in, f"{draw(st.integers(1, 2))}@{factors[-1]}", *coming_out])


@st.composite
def mirrored_structures(draw, min_levels=1):
    """Random structure strings: 1-3 levels, relative factors 2-5, 0-1 blocks around each, the
    same number on the way out as on the way in."""
    n_levels = draw(st.integers(min_levels, 3))
    factors = [1]
    for _ in range(n_levels - 1):
        factors.append(factors[-1] * draw(st.integers(2, 5)))
    outer_layers = [draw(st.integers(0, 1)) for _ in range(2 * (n_levels - 1))]
    going_in = [f"{outer_layers[i]}@{factors[i]}" for i in range(n_levels - 1)]
    coming_out = [f"{outer_layers[-1 - i]}@{factors[i]}" for i in reversed(range(n_levels - 1))]
    middle = f"{draw(st.integers(1, 2))}@{factors[-1]}"
    return " ".join([*going_in, middle, *coming_out])


#: Up to 60 arbitrary characters; 1-8 documents of 1-30 each (the tokenizer's round trips).
texts = st.text(min_size=0, max_size=60)
documents = st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=8)

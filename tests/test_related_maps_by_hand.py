"""Resolution maps of the other designs, value by value, written out by hand."""

from __future__ import annotations

import pytest
import torch

from hourglass_edu.related import SimpleHierarchicalConfig, SimpleHierarchicalLM
from hourglass_edu.related.maps import simple_hierarchical_map


def test_simple_hierarchical_map_with_stride_one_and_token_shift_by_hand():
    """Length 24, windows (2, 2, all), stride 1, token shift: query 23 reads, per stream, compressed
    positions 23, 23 - c, 23 - 2c, ... (window + 2 of them), each standing for c tokens."""
    resolution = simple_hierarchical_map(24, (1, 2, 8), (2, 2, None), strides=(1, 1, 1),
                                         token_shift=True)
    # stream 1: tokens 20-23 exact; stream 2: 16-23 in pairs (20-23 finer already); stream 8: all.
    assert resolution[23].tolist() == [8] * 16 + [2] * 4 + [1] * 4
    # query 5: stream 1 sees 2-5; stream 2 sees 0-5 (compressed 5, 3, 1; -1 is before the start).
    assert resolution[5].tolist()[:6] == [2, 2, 1, 1, 1, 1]


@pytest.mark.parametrize(
    "strides, token_shift", [((1, 1, 1), True), ((1, 1, 2), True), ((1, 2, 4), True),
                             ((1, 1, 1), False), ((1, 2, 4), False)],
)
def test_simple_hierarchical_map_support_is_the_measured_receptive_field(strides, token_shift):
    """One layer of the real model, measured by gradient, for strides and token shift."""
    torch.manual_seed(0)
    config = SimpleHierarchicalConfig(vocab_size=5, d_model=16, n_heads=2, n_layers=1,
                                      compressions=(1, 2, 4), windows=(3, 2, None),
                                      strides=strides, token_shift=token_shift)
    model = SimpleHierarchicalLM(config).double()
    length = 29
    embedded = torch.randn(1, length, 16, dtype=torch.float64, requires_grad=True)
    out = model.body(embedded, None)
    measured = torch.zeros(length, length, dtype=torch.bool)
    for t in range(length):
        (grad,) = torch.autograd.grad(out[0, t].sum(), embedded, retain_graph=True)
        measured[t] = grad[0].abs().sum(-1) > 0
    resolution = simple_hierarchical_map(length, config.compressions, config.windows,
                                         strides=strides, token_shift=token_shift)
    assert torch.equal(resolution > 0, measured)

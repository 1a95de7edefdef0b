"""Resolution maps of the other designs, value by value, written out by hand."""

from __future__ import annotations

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

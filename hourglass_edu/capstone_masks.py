"""The capstone's mask check: the learner's shortening mask against the library's, drawn.

Notebook 11 asks for attention shortening's mask without its formula. `check_shortening_mask`
compares the learner's mask with `funnel_down_mask` in two stages, a key that leaks the future
first, then a key hidden though it may be seen, and draws both masks in one grid where they
differ, so that the learner sees which queries and keys to look at.
"""

from __future__ import annotations

import torch

from hourglass_edu.attention import funnel_down_mask
from hourglass_edu.capstone_stages import CheckFailed, _expect_shape, _run

__all__ = ["check_shortening_mask"]


def _mask_picture(mine, library) -> str:
    """Both masks overlaid in one grid: rows are short queries, columns shifted keys."""
    marks = {(True, True): "■", (False, False): "·", (True, False): "+", (False, True): "-"}
    rows = ["".join(marks[bool(a), bool(b)] for a, b in zip(row_mine, row_library, strict=True))
            for row_mine, row_library in zip(mine.tolist(), library.tolist(), strict=True)]
    return ("rows: short queries 0, 1, ...; columns: shifted keys 0, 1, ...; ■ may see, "
            "· may not, + yours sees a key it may not, - yours hides a key it may see:\n    "
            + "\n    ".join(rows))


def check_shortening_mask(shortening_mask) -> bool:
    """`shortening_mask(short_length, full_length, k)`: bool (short_length, full_length), True
    where short query `i` may see shifted key `s`; compared with the library's funnel_down_mask,
    and where they differ the message draws both."""
    cases = [(6, 12, 2), (4, 12, 3), (3, 12, 4)]                # (short, full, k), full = short k
    state = {}

    def shape():
        state["masks"] = []
        for short, full, k in cases:
            mask = shortening_mask(short, full, k)
            _expect_shape(mask, (short, full), f"shortening_mask({short}, {full}, k={k})")
            if mask.dtype != torch.bool:
                raise CheckFailed(f"the mask should be a bool tensor (True: may see), got "
                                  f"{mask.dtype}")
            state["masks"].append((k, mask.cpu(), funnel_down_mask(short, full, k)))
        return "(short_length, full_length), bool"

    def no_future():
        for k, mine, library in state["masks"]:
            if bool((mine & ~library).any()):
                raise CheckFailed(
                    f"k={k}: a short query sees a key (+) that holds a character the first "
                    f"position to read this short vector may not see yet (a leak); "
                    f"{_mask_picture(mine, library)}")
        return "no short query sees a key from its readers' future"

    def equal():
        for k, mine, library in state["masks"]:
            if not torch.equal(mine, library):
                raise CheckFailed(
                    f"k={k}: a short query misses a key (-) it may see; "
                    f"{_mask_picture(mine, library)}")
        return f"{len(cases)} masks (k = 2, 3, 4)"

    return _run("shortening_mask", [("shape", shape), ("no key from the future", no_future),
                                    ("equal to funnel_down_mask", equal)])

"""How characters are written where a learner reads them: tick labels, pooled-group labels.

Shared by `analysis` (an `Inspection` labels every position of every level) and `viz` (the
figures draw those labels), so neither has to import the other for them.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["EOT_GLYPH", "FILL_GLYPH", "span_label", "visible_char"]

#: How characters that would be invisible on an axis are drawn.
VISIBLE_GLYPHS = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
#: Drawn for the end-of-text token and for the fill the k-1 shift inserts.
EOT_GLYPH = "◆"
FILL_GLYPH = "∅"


def visible_char(char: str) -> str:
    """How one character is written on an axis: spaces and newlines become visible glyphs."""
    return VISIBLE_GLYPHS.get(char, char)


def span_label(chars: Sequence[str], span: range) -> str:
    """Tick label for a position holding `span` of the full-resolution characters."""
    if len(span) == 0:
        return FILL_GLYPH
    return "".join(visible_char(chars[t]) for t in span)

"""Figures that let a learner watch each level of the hourglass work, and how training went.

Drawing only: what is drawn is measured in `hourglass_edu.analysis` (dependency matrices, one
captured forward pass as an `Inspection`, PCA) and `hourglass_edu.related.maps` (resolution maps).

Every plotting function returns a `matplotlib.figure.Figure` built directly (not through pyplot),
so calling one has no side effects: nothing is shown twice, nothing piles up in pyplot's figure
registry. In a notebook, a Figure that is the last expression of a cell is displayed; elsewhere,
call `fig.savefig(path)`. All figures share one style (`STYLE`, applied while they are built).

By subject:
- `causality`: `pooling_diagram` (which characters a shortened position pools, with and without
  the k-1 shift) and `plot_dependency` (matrices from `analysis.dependency_matrix`);
- `levels`: attention, activation, PCA and residual figures, all drawn from an `Inspection`
  made by `analysis.inspect_text(model, tokenizer, text)`, so a widget can redraw a different
  head or level without running the model again;
- `training`: `plot_history` (one run) and `plot_training_curves` (several runs);
- `maps`: `plot_resolution_maps` (the related designs of notebook 10);
- `style`: the palette, Matplotlib settings and figure helpers they share.

Every public name of those modules (each lists its own in `__all__`) is importable from
`hourglass_edu.viz` itself, as are the character glyphs of `hourglass_edu.glyphs`.
"""

from hourglass_edu import glyphs
from hourglass_edu.glyphs import *  # noqa: F403
from hourglass_edu.viz import causality, levels, maps, style, training
from hourglass_edu.viz.causality import *  # noqa: F403
from hourglass_edu.viz.levels import *  # noqa: F403
from hourglass_edu.viz.maps import *  # noqa: F403
from hourglass_edu.viz.style import *  # noqa: F403
from hourglass_edu.viz.training import *  # noqa: F403

#: Every public name of the subject modules (and the glyphs figures label positions with).
__all__ = [
    *glyphs.__all__,
    *style.__all__,
    *causality.__all__,
    *levels.__all__,
    *training.__all__,
    *maps.__all__,
]

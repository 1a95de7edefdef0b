"""Resolution maps of the related designs (notebook 10): which past positions each query sees,
and at what resolution. The maps themselves are computed in `hourglass_edu.related.maps`."""

from __future__ import annotations

import math

import matplotlib
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from torch import Tensor

from hourglass_edu.viz.style import new_figure, styled

__all__ = ["plot_resolution_maps"]


@styled
def plot_resolution_maps(
    maps: dict[str, Tensor], *, axes=None, max_resolution: float | None = None
) -> Figure:
    """Draw `{title: (query, key) map}` side by side: white = unseen, dark = exact, lighter =
    coarser summaries (log colour scale).

    Args:
        maps: from the functions of `hourglass_edu.related.maps` (0 = unseen, 1 = exact, r > 1 =
            seen through a summary shared by r positions).
        axes: draw into these axes (one per map) instead of a new figure.
        max_resolution: top of the colour scale (default: the coarsest resolution in the maps).

    Returns the figure the maps are drawn in.
    """
    if axes is None:
        figure = new_figure(3.2 * len(maps), 3.4)
        axes = figure.subplots(1, len(maps), squeeze=False)[0]
    else:
        figure = axes[0].figure
    top = max_resolution or max(float(m.max()) for m in maps.values())
    top = max(top, 2.0)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    image = None
    for axis, (title, resolution) in zip(axes, maps.items(), strict=True):
        masked = resolution.cpu().masked_fill(resolution.cpu() == 0, math.nan).numpy()
        image = axis.imshow(masked, cmap=cmap, norm=LogNorm(1, top), interpolation="nearest")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("key position")
        axis.set_ylabel("query position")
    bar = figure.colorbar(image, ax=list(axes), shrink=0.8)
    ticks = [2**power for power in range(int(math.log2(top)) + 1)]
    bar.set_ticks(ticks, labels=[str(tick) for tick in ticks])
    bar.minorticks_off()
    bar.set_label("positions per vector seen (1 = exact)")
    return figure

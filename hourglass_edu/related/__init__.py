"""Related designs, for comparison with the hourglass (notebook 10).

* ``LongShortLM`` (Zhu et al. 2021): a sliding window plus segment summaries by dynamic projection.
* ``HTransformerLM`` (Zhu & Soricut 2021): hierarchical attention, exact near, pooled far.
* ``SimpleHierarchicalLM``: parallel streams at several compressions, merged every layer.

Each has the same interface as ``HourglassLM`` (``model(tokens) -> logits``, a config with
``to_dict`` / ``from_dict``, ``num_parameters``, ``run_with_cache``); the attention functions
(``long_short_attention``, ``h_attention``, ``sliding_window_attention``) work on plain
``(batch, heads, length, head_dim)`` tensors.
"""

from hourglass_edu.related.h_transformer import HTransformerLM, h_attention
from hourglass_edu.related.long_short import LongShortConfig, LongShortLM
from hourglass_edu.related.long_short_attention import long_short_attention
from hourglass_edu.related.simple_hierarchical import (
    SimpleHierarchicalConfig,
    SimpleHierarchicalLM,
)

__all__ = [
    "HTransformerLM",
    "LongShortConfig",
    "LongShortLM",
    "SimpleHierarchicalConfig",
    "SimpleHierarchicalLM",
    "h_attention",
    "long_short_attention",
]

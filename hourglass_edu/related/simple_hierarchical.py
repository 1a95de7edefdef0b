"""A simple hierarchical transformer: parallel streams at several compressions.

The design (after lucidrains' "simple hierarchical transformer", which has no published results):
the token embeddings feed several *streams* side by side, one per compression c in
``compressions`` (e.g. 1, 2, 8). Stream c sees the sequence c times shorter: each of its vectors
summarises c consecutive tokens. Every layer runs one transformer block per stream, each with its
own attention (a sliding window, or full causal attention), and then merges all streams, position
by position, into the c = 1 stream, the one that predicts the next character.

Unlike the hourglass, the streams run *in parallel* (not one inside the other) and the coarse
streams never read the fine one back: they only ever see the compressed embeddings.

Causality. Stream c is made by a strided convolution with kernel = stride = c (the same as
"concatenate each group of c vectors and project", the library's ``LinearShortening``) applied
after shifting the embeddings right by c - 1. So compressed position p summarises tokens
p*c - (c-1) ... p*c, and fine position t, which reads compressed position t // c, sees only tokens
<= (t // c) * c <= t. Without the shift, position t would read tokens up to t + c - 1.

Training loss: the model returns next-character logits only, so bits per character are the
cross-entropy alone. (The original adds auxiliary losses on the coarse streams; they are left out
here to keep the comparison with the other models on the same objective.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import repeat
from torch import Tensor, nn

from hourglass_edu.blocks import TransformerBlock, record
from hourglass_edu.lm import BlockStackConfig, LanguageModel
from hourglass_edu.related.long_short import LongShortAttention
from hourglass_edu.resampling import LinearShortening, pad_to_multiple, shift_right

__all__ = [
    "SimpleHierarchicalConfig",
    "SimpleHierarchicalLM",
]


@dataclass
class SimpleHierarchicalConfig(BlockStackConfig):
    """Everything that defines a ``SimpleHierarchicalLM``.

    compressions: one stream per entry; the first must be 1 (the predicting stream), the rest
      strictly increasing, e.g. ``(1, 2, 8)``.
    windows: per stream, keys per query of its sliding-window attention, or None for full causal
      attention; counted in that stream's own (compressed) positions. Same length as compressions.
    n_layers: layers; each layer is one block per stream followed by one merge.
    """

    n_layers: int = 4
    compressions: tuple[int, ...] = (1, 2, 8)
    windows: tuple[int | None, ...] = (32, None, None)

    def __post_init__(self):
        super().__post_init__()
        self.compressions = tuple(self.compressions)
        self.windows = tuple(self.windows)
        if not self.compressions or any(
            isinstance(c, bool) or not isinstance(c, int) for c in self.compressions
        ):
            raise ValueError(
                f"compressions must be a non-empty list of integers, got {self.compressions!r}"
            )
        if self.compressions[0] != 1:
            raise ValueError(
                f"compressions must start with 1 (the stream that predicts the next "
                f"character), got {self.compressions!r}, e.g. (1, 2, 8)"
            )
        if any(b <= a for a, b in zip(self.compressions, self.compressions[1:], strict=False)):
            raise ValueError(f"compressions must be strictly increasing, got {self.compressions!r}")
        if len(self.windows) != len(self.compressions):
            raise ValueError(
                f"windows needs one entry per stream ({len(self.compressions)} for compressions "
                f"{self.compressions!r}), got {self.windows!r}; use None for full attention"
            )
        for window in self.windows:
            if window is not None and (
                isinstance(window, bool) or not isinstance(window, int) or window < 1
            ):
                raise ValueError(
                    f"each window must be a positive integer or None (full causal "
                    f"attention), got {window!r}"
                )


class SimpleHierarchicalLM(LanguageModel):
    """Character LM with parallel streams at several compressions, merged every layer.

    Capture names: ``embedding``; ``stream{c}.input`` ``(batch, ceil(L / c), d)`` for each
    compression c > 1 (the compressed embeddings); ``layer{j}.stream{c}`` (block output of stream
    c in layer j) and ``layer{j}.stream{c}.attn`` (its weights, ``(batch, heads, n_c, n_c)``);
    ``layer{j}.merged`` ``(batch, L, d)`` (the predicting stream after the merge);
    ``final_norm``.
    """

    config_class = SimpleHierarchicalConfig

    def __init__(self, config: SimpleHierarchicalConfig):
        super().__init__(config)
        width = config.feed_forward_width

        def block(window):
            attention = None
            if window is not None:  # sliding window = Long-Short without the summaries
                attention = LongShortAttention(
                    config.d_model,
                    config.n_heads,
                    window=window,
                    segment_size=None,
                    rank=None,
                    dual_norm=False,
                    rotary=self.rotary,
                )
            return TransformerBlock(
                config.d_model,
                config.n_heads,
                width,
                dropout=config.dropout,
                rotary=self.rotary,
                attention=attention,
            )

        self.compressors = nn.ModuleList(
            LinearShortening(config.d_model, c) for c in config.compressions[1:]
        )
        self.layers = nn.ModuleList(
            nn.ModuleList(block(w) for w in config.windows) for _ in range(config.n_layers)
        )
        coarse = len(config.compressions) - 1
        self.merges = (
            nn.ModuleList(
                nn.Linear(coarse * config.d_model, config.d_model) for _ in range(config.n_layers)
            )
            if coarse
            else None
        )
        for merge in self.merges or []:
            merge.is_residual_output = True  # a residual branch: scaled at init like the others
        self.init_weights()

    def compress(self, x: Tensor, factor: int, compressor: nn.Module) -> Tensor:
        """``(batch, L, d)`` -> ``(batch, ceil(L / factor), d)``: shift right by factor - 1, then
        the strided convolution. Position p summarises tokens p*factor - (factor-1) ... p*factor."""
        return compressor(shift_right(pad_to_multiple(x, factor), factor - 1))

    def body(self, x: Tensor, capture: dict | None) -> Tensor:
        length = x.shape[1]
        compressions = self.config.compressions
        streams = [x]
        for factor, compressor in zip(compressions[1:], self.compressors, strict=True):
            streams.append(self.compress(x, factor, compressor))
            record(capture, f"stream{factor}.input", streams[-1])
        for j, blocks in enumerate(self.layers):
            for s, (factor, block) in enumerate(zip(compressions, blocks, strict=True)):
                positions = torch.arange(streams[s].shape[1], device=x.device)
                streams[s] = block(
                    streams[s], positions, capture=capture, name=f"layer{j}.stream{factor}"
                )
            if self.merges is not None:
                # Fine position t reads compressed position t // factor (repeat, then crop).
                upsampled = [
                    repeat(stream, "b n d -> b (n k) d", k=factor)[:, :length]
                    for factor, stream in zip(compressions[1:], streams[1:], strict=True)
                ]
                streams[0] = streams[0] + self.merges[j](torch.cat(upsampled, dim=-1))
                record(capture, f"layer{j}.merged", streams[0])
        return streams[0]

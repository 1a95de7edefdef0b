"""A simple hierarchical transformer: parallel streams at several compressions, merged every layer.

Which variant. This is the *default* variant of lucidrains' "simple hierarchical transformer"
(a public repository without a paper): hierarchical stride 1. Its comments call the cheaper
alternative, stride equal to the compression, "much worse" (a fine position then reads a coarse
vector up to c - 1 tokens old). ``strides`` chooses per stream; the default is stride 1.

The pieces, for a stream of compression c and stride s (the first stream, c = 1, predicts):

* **Compressor** (made once, from the token embeddings): a causal convolution over the last c
  embeddings (kernel c, stride s, c - 1 zeros in front), SiLU, a 1x1 convolution to the stream's
  width, LayerNorm. Compressed position q summarises tokens q*s - (c-1) .. q*s, so it never reads
  the future. With stride 1 there is one compressed vector per token: the stream is not shorter.
* **Axial blocks**: the stream is split into a = c / s interleaved subsequences (positions
  q, q - a, q - 2a, ...; consecutive members summarise disjoint, adjacent groups of tokens), and
  each block runs causal attention inside each subsequence only (``windows`` counts keys in these
  subsequence positions; None = all). That is where the saving is: each attention is a times
  shorter, O(L^2 / c) per stream with stride 1 (the feed-forward still runs on every position).
* **Token shift** (``token_shift``, after RWKV): half the channels of the input of the attention
  and of the feed-forward come from the previous member of the same subsequence, a cheap way to
  mix in one more step of context.
* **Merge**, every layer: all streams (the predicting one included, coarse ones repeated by their
  stride to full length) are concatenated, LayerNorm, Linear to 2 * d_model, SiLU, Linear to
  d_model, and the result is added to the predicting stream. The coarse streams never read the
  fine one back.
* **Widths** (``stream_widths``): each stream may have its own width (the reference gives coarser
  streams more); the heads count is shared, so the head size is width / n_heads.

Unlike the hourglass, the streams run *in parallel* (not one inside the other).

Left out: the reference's auxiliary losses (reconstruction of the compressed tokens, next-vector
prediction per coarse stream). The model returns next-character logits only, so its bits per
character are the plain cross-entropy, like the other models of the comparison.

Decoding: ``generate(..., use_cache=True)`` decodes one position at a time with per-stream,
per-subsequence key/value caches (``new_cache()``, in
``hourglass_edu.related.simple_hierarchical_cache``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from hourglass_edu.blocks import RotaryAngles, RotaryEmbedding, TransformerBlock, record
from hourglass_edu.lm import BlockStackConfig, LanguageModel
from hourglass_edu.related.long_short import LongShortAttention
from hourglass_edu.related.simple_hierarchical_cache import SimpleHierarchicalCache
from hourglass_edu.resampling import pad_to_multiple

__all__ = ["SimpleHierarchicalConfig", "SimpleHierarchicalLM", "token_shift"]

# The layout of the model's weights; a saved config without it is from the old strided model.
LAYOUT_VERSION = 2


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass
class SimpleHierarchicalConfig(BlockStackConfig):
    """Everything that defines a ``SimpleHierarchicalLM``.

    compressions: one stream per entry; the first must be 1 (the predicting stream), the rest
      strictly increasing, e.g. ``(1, 2, 8)``.
    windows: per stream, keys per query of its attention (counted in that stream's subsequence
      positions, itself included), or None for full causal attention. Same length as compressions.
    strides: per stream, the step between compressed positions; must divide the compression; the
      first must be 1. None = 1 everywhere (the reference's default and stronger variant); stride
      equal to the compression is the cheaper, weaker variant.
    stream_widths: per stream, its width (None = d_model everywhere); the first must be d_model
      and each must give an even head size with n_heads heads.
    token_shift: shift half the channels by one subsequence step before attention and
      feed-forward.
    compressor_expansion: hidden width of the compressor's convolution, in multiples of d_model.
    n_layers: layers; each layer is one block per stream followed by one merge.
    version: the weights' layout (2); configs saved before it existed cannot be loaded.
    """

    n_layers: int = 4
    compressions: tuple[int, ...] = (1, 2, 8)
    windows: tuple[int | None, ...] = (32, None, None)
    strides: tuple[int, ...] | None = None
    stream_widths: tuple[int, ...] | None = None
    token_shift: bool = True
    compressor_expansion: int = 4
    version: int = LAYOUT_VERSION

    @classmethod
    def from_dict(cls, data):
        if isinstance(data, dict) and "version" not in data:
            raise ValueError(
                "this SimpleHierarchicalConfig was saved by an older hourglass_edu (the strided "
                "model with a linear compressor and merge, before 'version' existed): its "
                "weights do not fit the current model; train it again"
            )
        return super().from_dict(data)

    def __post_init__(self):
        super().__post_init__()
        self.compressions = tuple(self.compressions)
        self.windows = tuple(self.windows)
        self.strides = (
            tuple(self.strides) if self.strides is not None else (1,) * len(self.compressions)
        )
        self.stream_widths = (
            tuple(self.stream_widths)
            if self.stream_widths is not None
            else (self.d_model,) * len(self.compressions)
        )
        if self.version != LAYOUT_VERSION:
            raise ValueError(f"version must be {LAYOUT_VERSION} (the layout this library builds), "
                             f"got {self.version!r}")
        self._check_compressions()
        self._check_per_stream()
        if not _positive_int(self.compressor_expansion):
            raise ValueError(f"compressor_expansion must be a positive integer, got "
                             f"{self.compressor_expansion!r}")
        if not isinstance(self.token_shift, bool):
            raise ValueError(f"token_shift must be True or False, got {self.token_shift!r}")

    def _check_compressions(self):
        if not self.compressions or not all(_positive_int(c) for c in self.compressions):
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

    def _check_per_stream(self):
        streams = len(self.compressions)
        for name in ("windows", "strides", "stream_widths"):
            if len(getattr(self, name)) != streams:
                raise ValueError(
                    f"{name} needs one entry per stream ({streams} for compressions "
                    f"{self.compressions!r}), got {getattr(self, name)!r}"
                    + ("; use None for full attention" if name == "windows" else "")
                )
        for window in self.windows:
            if window is not None and not _positive_int(window):
                raise ValueError(
                    f"each window must be a positive integer or None (full causal "
                    f"attention), got {window!r}"
                )
        for compression, stride in zip(self.compressions, self.strides, strict=True):
            if not _positive_int(stride) or compression % stride != 0:
                raise ValueError(
                    f"each stride must be a positive integer dividing its compression, got "
                    f"stride {stride!r} for compression {compression}; use 1 (the default)"
                )
        if self.stream_widths[0] != self.d_model:
            raise ValueError(
                f"stream_widths[0] must be d_model={self.d_model} (the predicting stream), got "
                f"{self.stream_widths[0]!r}"
            )
        for width in self.stream_widths:
            if not _positive_int(width) or width % self.n_heads or (width // self.n_heads) % 2:
                raise ValueError(
                    f"each stream width must be a positive multiple of n_heads={self.n_heads} "
                    f"with an even head size (width / n_heads), got {width!r}"
                )


def token_shift(x: Tensor) -> Tensor:
    """``(batch, length, d)``: the second half of the channels moves one position later (zeros
    at position 0); the first half stays. Position t then holds half of t and half of t - 1."""
    keep, shifted = x.chunk(2, dim=-1)
    shifted = torch.cat((torch.zeros_like(shifted[:, :1]), shifted[:, :-1]), dim=1)
    return torch.cat((keep, shifted), dim=-1)


class CausalCompressor(nn.Module):
    """Token embeddings ``(batch, L, d_model)`` -> stream ``(batch, ceil(L / stride), width)``.

    Causal convolution (kernel ``compression``, stride ``stride``, ``compression - 1`` zeros in
    front), SiLU, 1x1 convolution, LayerNorm. Output q summarises tokens
    ``q*stride - (compression-1) .. q*stride``.
    """

    def __init__(self, d_model: int, width: int, compression: int, stride: int, expansion: int):
        super().__init__()
        self.compression = compression
        hidden = expansion * d_model
        self.window = nn.Conv1d(d_model, hidden, compression, stride=stride)
        self.activation = nn.SiLU()
        self.out = nn.Conv1d(hidden, width, 1)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        return self._compress(x, self.compression - 1, self.window.stride)

    def newest(self, recent: Tensor) -> Tensor:
        """The compressed vector of the newest position from the last ``compression`` (or
        fewer, at the start) embeddings ``(batch, <= compression, d)`` -> ``(batch, 1, width)``;
        zeros stand in before the start, as in ``forward``. (One window: no stride to take.)"""
        return self._compress(recent, self.compression - recent.shape[1], 1)

    def _compress(self, x: Tensor, zeros_in_front: int, stride) -> Tensor:
        x = nn.functional.pad(rearrange(x, "b l d -> b d l"), (zeros_in_front, 0))
        x = nn.functional.conv1d(x, self.window.weight, self.window.bias, stride=stride)
        x = self.out(self.activation(x))
        return self.norm(rearrange(x, "b d l -> b l d"))


class StreamBlock(TransformerBlock):
    """A pre-norm block run on ``axial`` interleaved subsequences of a stream, with token shift.

    ``forward(x, capture=None, name="")``: x ``(batch, n, width)`` -> same. Position q attends
    only to q - a, q - 2a, ... (a = ``axial``; the last ``window`` of them, itself included, or all
    with window None). With axial 1 and no token shift this is exactly ``TransformerBlock``.
    Captures ``{name}`` and ``{name}.attn`` (weights ``(batch * axial, heads, n / a, n / a)``,
    one attention per subsequence).
    """

    def __init__(self, width: int, n_heads: int, d_ff: int, *, axial: int, window: int | None,
                 shift: bool, dropout: float, rotary: RotaryEmbedding):
        attention = None
        if window is not None:  # sliding window = Long-Short without the summaries
            attention = LongShortAttention(width, n_heads, window=window, segment_size=None,
                                           rank=None, dual_norm=False, rotary=rotary)
        super().__init__(width, n_heads, d_ff, dropout=dropout, rotary=rotary,
                         attention=attention)
        self.axial = axial
        self.shift = shift

    def positions(self, length: int, device) -> RotaryAngles:
        """The rotation angles of subsequence positions ``0 .. ceil(length / axial) - 1``."""
        return self.attn.rotary.angles(torch.arange(-(-length // self.axial), device=device))

    def _shifted(self, x: Tensor) -> Tensor:
        return token_shift(x) if self.shift else x

    def forward(self, x: Tensor, *, capture: dict | None = None, name: str = "",
                angles: RotaryAngles | None = None) -> Tensor:
        """``angles``: the rotation of positions ``0 .. ceil(n / axial) - 1`` (the stream's
        `angles`, computed once for all its blocks); None computes them here."""
        length = x.shape[1]
        x = rearrange(pad_to_multiple(x, self.axial), "b (m a) d -> (b a) m d", a=self.axial)
        positions = self.positions(length, x.device) if angles is None else angles
        attended, weights = self.attn(
            self.attn_norm(self._shifted(x)), query_positions=positions, causal=True,
            need_weights=capture is not None,
        )
        x = x + self.attn_dropout(attended)
        x = x + self.ff(self.ff_norm(self._shifted(x)))
        x = rearrange(x, "(b a) m d -> b (m a) d", a=self.axial)[:, :length]
        record(capture, f"{name}.attn", weights)
        record(capture, name, x)
        return x


class StreamMerge(nn.Module):
    """All streams (coarse ones repeated by their stride) -> the update of the predicting stream:
    LayerNorm of the concatenation, Linear to 2 * d_model, SiLU, Linear to d_model."""

    def __init__(self, widths: tuple[int, ...], d_model: int, strides: tuple[int, ...]):
        super().__init__()
        self.strides = strides
        self.norm = nn.LayerNorm(sum(widths))
        self.expand = nn.Linear(sum(widths), 2 * d_model)
        self.activation = nn.SiLU()
        self.contract = nn.Linear(2 * d_model, d_model)
        self.contract.is_residual_output = True  # a residual branch: scaled at init

    def forward(self, streams: list[Tensor], length: int) -> Tensor:
        # Fine position t reads compressed position t // stride (repeat, then crop).
        full = [
            repeat(stream, "b n d -> b (n s) d", s=stride)[:, :length]
            for stream, stride in zip(streams, self.strides, strict=True)
        ]
        return self.mix(torch.cat(full, dim=-1))

    def mix(self, joined: Tensor) -> Tensor:
        """The streams side by side ``(..., sum of widths)`` -> the update ``(..., d_model)``."""
        return self.contract(self.activation(self.expand(self.norm(joined))))


class SimpleHierarchicalLM(LanguageModel):
    """Character LM with parallel streams at several compressions, merged every layer.

    Capture names: ``embedding``; ``stream{c}.input`` ``(batch, ceil(L / s), width)`` for each
    compression c > 1 (the compressed embeddings); ``layer{j}.stream{c}`` (block output of stream
    c in layer j) and ``layer{j}.stream{c}.attn`` (its weights, one attention per subsequence, see
    ``StreamBlock``); ``layer{j}.merged`` ``(batch, L, d)`` (the predicting stream after the
    merge); ``final_norm``.
    """

    config_class = SimpleHierarchicalConfig
    comparison_variants = ("simple_hierarchical",)
    small_fields = {"n_layers": 2, "compressions": (1, 2, 4), "windows": (8, None, None)}

    def new_cache(self):
        """Per-stream, per-subsequence caches (`related.simple_hierarchical_cache`)."""
        return SimpleHierarchicalCache(self)

    @classmethod
    def comparison_config(cls, variant, *, common, n_layers, window):
        """ceil(n_layers / 2) layers of three streams (1, 2, 8), the reference's default variant
        (stride 1, convolution compressors, token shift); the predicting stream has a sliding
        window of ``window``, the others full attention inside their subsequences. The coarse
        streams are narrower (widths d, d/2, d/4, compressors twice as wide as their input): at
        full width the convolution compressors alone would give it about 3x the transformer's
        parameters."""
        d_model = common["d_model"]
        return SimpleHierarchicalConfig(
            **common, n_layers=math.ceil(n_layers / 2), compressions=(1, 2, 8),
            windows=(window, None, None), stream_widths=(d_model, d_model // 2, d_model // 4),
            compressor_expansion=2,
        )

    def __init__(self, config: SimpleHierarchicalConfig):
        super().__init__(config)
        streams = list(zip(config.compressions, config.strides, config.stream_widths,
                           config.windows, strict=True))
        # One rotary per head size (no weights: these only hold their frequencies).
        self.stream_rotaries = nn.ModuleList(
            self.rotary if width == config.d_model
            else RotaryEmbedding(width // config.n_heads, config.rotary_base)
            for _, _, width, _ in streams
        )

        def block(stream: int) -> StreamBlock:
            compression, stride, width, window = streams[stream]
            d_ff = config.feed_forward_width * width // config.d_model
            return StreamBlock(width, config.n_heads, d_ff, axial=compression // stride,
                               window=window, shift=config.token_shift, dropout=config.dropout,
                               rotary=self.stream_rotaries[stream])

        self.compressors = nn.ModuleList(
            CausalCompressor(config.d_model, width, compression, stride,
                             config.compressor_expansion)
            for compression, stride, width, _ in streams[1:]
        )
        self.layers = nn.ModuleList(
            nn.ModuleList(block(s) for s in range(len(streams))) for _ in range(config.n_layers)
        )
        self.merges = (
            nn.ModuleList(
                StreamMerge(config.stream_widths, config.d_model, config.strides)
                for _ in range(config.n_layers)
            )
            if len(streams) > 1
            else None
        )
        self.init_weights()

    def body(self, x: Tensor, capture: dict | None) -> Tensor:
        length = x.shape[1]
        compressions = self.config.compressions
        streams = [x]
        for compression, compressor in zip(compressions[1:], self.compressors, strict=True):
            streams.append(compressor(x))
            record(capture, f"stream{compression}.input", streams[-1])
        # each stream's rotation angles, once for all its layers
        angles = [block.positions(stream.shape[1], stream.device)
                  for block, stream in zip(self.layers[0], streams, strict=True)]
        for j, blocks in enumerate(self.layers):
            streams = [
                block(stream, capture=capture, name=f"layer{j}.stream{compression}", angles=a)
                for compression, block, stream, a in zip(compressions, blocks, streams, angles,
                                                         strict=True)
            ]
            if self.merges is not None:
                streams[0] = streams[0] + self.merges[j](streams, length)
                record(capture, f"layer{j}.merged", streams[0])
        return streams[0]

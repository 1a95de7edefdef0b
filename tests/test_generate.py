"""Cached incremental decoding equals the full forward pass, at every level, for every variant.

The reference is the model itself: `model(tokens)` gives the logits at every position; the
cached decoder, fed the same tokens in chunks (a prefill, then single steps or small chunks),
must give the same logits at every position (fp32, 1e-4). Random structures (1-3 levels,
factors 2-5), lengths, chunkings, every shortening x upsampling type and both shift fills.
Weights are randomised well away from their small init so that every level moves the logits
(checked: a change deep inside the innermost level moves them far beyond the tolerance).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import structures
from tiny import tiny_hourglass

from hourglass_edu import HourglassLM
from hourglass_edu.attention import KeyValueCache
from hourglass_edu.data import CharTokenizer
from hourglass_edu.decoding import CachedDecoder
from hourglass_edu.generation import generate, stream
from hourglass_edu.hourglass_cache import HourglassCache

VOCAB_CHARS = "abcdefghij \n"
TOLERANCE = 1e-4
COMBOS = list(itertools.product(("avg", "linear", "attention"), ("repeat", "linear", "attention"),
                                ("zeros", "learned")))




def build(structure, shortening="avg", upsampling="repeat", shift_fill="zeros", seed=0,
          max_length=96, **overrides) -> HourglassLM:
    """A tiny model with weights pushed far from init, so every part shows in the logits."""
    model = tiny_hourglass(
        len(VOCAB_CHARS) + 1, seed=seed, d_model=16, structure=structure,
        shortening=shortening, upsampling=upsampling, shift_fill=shift_fill, d_ff=32,
        max_length=max_length, **overrides,
    ).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return model


def random_tokens(model, length, seed, batch=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=generator)


def cached_logits(model, tokens, chunk_sizes) -> torch.Tensor:
    """Logits at every position from the cached decoder, fed chunk by chunk."""
    decoder = model.new_cache()
    pieces, start = [], 0
    for size in chunk_sizes:
        pieces.append(decoder.extend(tokens[:, start : start + size]))
        start += size
    assert start == tokens.shape[1]
    return torch.cat(pieces, dim=1)


@settings(max_examples=60)
@given(
    structure=structures(),
    combo=st.sampled_from(COMBOS),
    length=st.integers(1, 40),
    prefill=st.integers(1, 40),
    chunked=st.booleans(),
    batch=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_cached_logits_equal_the_full_forward_pass(structure, combo, length, prefill, chunked,
                                                   batch, seed):
    shortening, upsampling, shift_fill = combo
    model = build(structure, shortening, upsampling, shift_fill, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.config.vocab_size, (batch, length), generator=generator)
    prefill = min(prefill, length)
    rest = length - prefill
    if chunked:  # uneven chunks: a chunk may end anywhere inside a group
        sizes = torch.randint(1, 6, (rest,), generator=generator).tolist()
        chunks, total = [], 0
        for size in sizes:
            if total >= rest:
                break
            chunks.append(min(size, rest - total))
            total += chunks[-1]
    else:
        chunks = [1] * rest
    with torch.no_grad():
        full = model(tokens)
    cached = cached_logits(model, tokens, [prefill, *chunks])
    torch.testing.assert_close(cached, full, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("shortening, upsampling, shift_fill", COMBOS)
def test_every_variant_one_token_at_a_time(shortening, upsampling, shift_fill):
    """Each combination, nested two levels deep with factors 2 and 3: steps from the first token."""
    model = build("1@1 1@2 1@6 1@2 1@1", shortening, upsampling, shift_fill, seed=3)
    tokens = random_tokens(model, 31, seed=1)
    with torch.no_grad():
        full = model(tokens)
    torch.testing.assert_close(cached_logits(model, tokens, [1] * 31), full, atol=TOLERANCE,
                               rtol=0)


def test_the_comparison_is_sensitive_to_the_innermost_level():
    """Control: the tolerance is far below what the innermost level contributes, so a decoder
    that got the groups wrong (late, early, or missing) could not pass the tests above."""
    model = build("1@1 1@2 1@6 1@2 1@1", "linear", "linear", "learned", seed=5)
    tokens = random_tokens(model, 30, seed=2)
    with torch.no_grad():
        before = model(tokens)
        model.hourglass.inner.inner.pre_blocks[0].ff.contract.bias.add_(0.5)
        after = model(tokens)
    moved = (after - before).abs().amax(dim=-1)[0]
    assert moved.min() > 100 * TOLERANCE  # every position depends on the innermost level
    # and the learned fill matters for the first group of each level
    with torch.no_grad():
        model.hourglass.shift.fill.add_(1.0)
        shifted_fill = model(tokens)
    assert (shifted_fill - after)[0, 0].abs().max() > 100 * TOLERANCE


def test_kv_cache_grows_without_losing_entries():
    cache = KeyValueCache()
    chunks = [torch.randn(2, 3, size, 4) for size in (1, 20, 1, 1, 40, 3)]
    for chunk in chunks:
        keys, values = cache.extend(chunk, -chunk)
    everything = torch.cat(chunks, dim=2)
    assert torch.equal(keys, everything) and torch.equal(values, -everything)
    assert cache.length == everything.shape[2]


def test_decoder_refuses_to_run_past_max_length_and_bad_models():
    model = build("1@1 1@3 1@1", max_length=12)
    cache = model.new_cache()
    cache.extend(torch.zeros(1, 10, dtype=torch.long))
    cache.extend(torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="max_length"):
        cache.extend(torch.zeros(1, 1, dtype=torch.long))
    assert model.new_cache().extend(torch.zeros(1, 3, dtype=torch.long)).shape[1] == 3
    with pytest.raises(ValueError, match="no cached decoder for Linear"):
        CachedDecoder(torch.nn.Linear(2, 2))
    leaky = build("1@1 1@3 1@1", unsafe_disable_shift=True)
    with pytest.raises(ValueError, match="shift"):
        leaky.new_cache()


# --- generation with and without the cache ------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer(VOCAB_CHARS)


@pytest.mark.parametrize("structure, shortening, upsampling, shift_fill", [
    ("1@1 2@3 1@1", "attention", "attention", "learned"),
    ("1@1 1@2 1@4 1@2 1@1", "linear", "repeat", "zeros"),
    ("2@1", "avg", "repeat", "zeros"),
])
def test_greedy_and_seeded_generation_are_identical_with_and_without_cache(
    tokenizer, structure, shortening, upsampling, shift_fill
):
    # max_length 16 and 40 new characters: the window overflows (re-prefill) on the way
    model = build(structure, shortening, upsampling, shift_fill, seed=11, max_length=16)
    for settings_ in ({"temperature": 0}, {"temperature": 1.0, "seed": 4},
                      {"temperature": 0.7, "top_k": 5, "top_p": 0.9, "seed": 9}):
        cached = generate(model, tokenizer, "abc", 40, stop_at_end=False, **settings_)
        recomputed = generate(model, tokenizer, "abc", 40, stop_at_end=False, use_cache=False,
                              **settings_)
        assert cached == recomputed
        assert len(cached) >= 40  # <eot> renders as 5 characters
    pieces = list(stream(model, tokenizer, "abc", 40, stop_at_end=False, **settings_))
    assert "".join(pieces) == cached
    assert len({generate(model, tokenizer, "", 20, seed=s) for s in range(4)}) > 1


def test_generation_uses_the_cached_decoder(tokenizer, monkeypatch):
    model = build("1@1 1@3 1@1", seed=1)
    calls = []
    original = HourglassCache.extend

    def counting_extend(self, tokens, **options):
        calls.append(tokens.shape[1])
        return original(self, tokens, **options)

    monkeypatch.setattr(HourglassCache, "extend", counting_extend)
    generate(model, tokenizer, "abcd", 10, temperature=0, stop_at_end=False)
    assert calls == [5] + [1] * 9  # prefill <eot>abcd, then one step per new token but the last


def test_long_prompt_and_window_overflow_match_recompute(tokenizer):
    model = build("1@1 1@2 1@1", "attention", "linear", "zeros", seed=2, max_length=16)
    prompt = ("abcdefghij " * 3)[:29]  # longer than the context: its last 16 tokens are kept
    cached, recomputed = (
        generate(model, tokenizer, prompt, 30, temperature=0, use_cache=use_cache,
                 stop_at_end=False)
        for use_cache in (True, False)
    )
    assert cached == recomputed


def test_cached_decoding_runs_on_one_thread_and_gives_the_caller_its_setting_back(monkeypatch):
    model = tiny_hourglass(11, d_model=16)
    tokenizer = CharTokenizer("abcdefghi\n")
    seen = []
    extend = HourglassCache.extend

    def spy(self, tokens, **options):
        seen.append(torch.get_num_threads())
        return extend(self, tokens, **options)

    monkeypatch.setattr(HourglassCache, "extend", spy)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        text = generate(model, tokenizer, "ab", 6, temperature=0, stop_at_end=False)
        assert set(seen) == {1} and torch.get_num_threads() == 2
        seen.clear()
        assert generate(model, tokenizer, "ab", 6, temperature=0, stop_at_end=False,
                        threads=2) == text
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(previous)
    with pytest.raises(ValueError, match="threads"):
        generate(model, tokenizer, "ab", 6, threads=0)


class _HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ops that read a tensor's value back to the host (a sync on an accelerator)."""

    READS = {"_local_scalar_dense", "nonzero", "is_nonzero", "masked_select", "equal"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("use_cache", [True, False])
def test_each_generated_character_reads_from_the_device_once(tokenizer, monkeypatch, use_cache):
    """One host sync per character: the sampled token (`.tolist()`), nothing else: no token range
    check, no greedy-fallback test, no copy of the probabilities to the CPU."""
    model = build("1@1 1@2 1@1", "attention", "attention", seed=3)
    reads = _HostReads()
    tolist = torch.Tensor.tolist

    def counted_tolist(self):
        reads.count += 1
        return tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    new = 12
    with reads:
        generate(model, tokenizer, "abc", new, temperature=0.8, top_k=5, top_p=0.9, seed=1,
                 stop_at_end=False, use_cache=use_cache)
    assert reads.count == new

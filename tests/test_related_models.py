"""The related language models: causality, equivalences with the library's transformer, configs,
the simple hierarchical model's pieces, and cached decoding against recomputation."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import tiny_related

from hourglass_edu import HourglassConfig, HourglassLM
from hourglass_edu.related import (
    HTransformerLM,
    LongShortConfig,
    LongShortLM,
    SimpleHierarchicalConfig,
    SimpleHierarchicalLM,
)
from hourglass_edu.related.h_transformer import HTransformerConfig

VOCAB = 13
TINY = dict(vocab_size=VOCAB, d_model=32, n_heads=2, n_layers=2, max_length=64)


def tiny_models():
    torch.manual_seed(0)
    hierarchical = dict(compressions=(1, 2, 4), windows=(4, None, 3))
    return {
        "long_short": tiny_related("LongShortLM", VOCAB, window=5, segment_size=4, rank=2),
        "long_short_window_only": tiny_related("LongShortLM", VOCAB, window=3,
                                               segment_size=None, rank=None),
        "h_transformer": tiny_related("HTransformerLM", VOCAB, block_size=4),
        "simple_hierarchical": tiny_related("SimpleHierarchicalLM", VOCAB, **hierarchical),
        "simple_hierarchical_strided": tiny_related("SimpleHierarchicalLM", VOCAB, **hierarchical,
                                                    strides=(1, 2, 4)),
        "simple_hierarchical_mixed": tiny_related(
            "SimpleHierarchicalLM", VOCAB, **hierarchical, strides=(1, 1, 2),
            stream_widths=(32, 48, 64), token_shift=False,
        ),
    }


MODELS = {name: model.double().eval() for name, model in tiny_models().items()}
NAMES = sorted(MODELS)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=12)
@given(data=st.data())
def test_changing_token_j_never_moves_logits_before_j(name, data):
    model = MODELS[name]
    length = data.draw(st.integers(2, 40))
    tokens = torch.tensor(
        [data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=length, max_size=length))]
    )
    j = data.draw(st.integers(0, length - 1))
    changed = tokens.clone()
    changed[0, j] = (tokens[0, j] + data.draw(st.integers(1, VOCAB - 1))) % VOCAB
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    torch.testing.assert_close(before[:, :j], after[:, :j], rtol=0, atol=1e-12)
    assert not torch.allclose(before[:, j], after[:, j]), "token j must affect its own logits"


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=6)
@given(data=st.data())
def test_prefix_consistency(name, data):
    """The last logits of every prefix equal the logits at that position in the full run."""
    model = MODELS[name]
    length = data.draw(st.integers(1, 20))
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    tokens = torch.randint(0, VOCAB, (2, length), generator=generator)
    with torch.no_grad():
        full = model(tokens)
        for prefix in range(1, length + 1):
            torch.testing.assert_close(model(tokens[:, :prefix])[:, -1], full[:, prefix - 1])


@pytest.mark.parametrize("name", NAMES)
def test_run_with_cache_matches_forward_and_records_blocks(name):
    model = MODELS[name]
    tokens = torch.randint(0, VOCAB, (2, 19))
    logits, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(logits, model(tokens))
    assert {"embedding", "final_norm"} <= set(cache)
    attention = [key for key in cache if key.endswith(".attn")]
    assert len(attention) >= model.config.n_layers
    for key in attention:
        weights = cache[key]
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]))
        assert (weights.triu(1) == 0).all(), f"{key} puts weight on the future"


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trips_through_json(name):
    config = MODELS[name].config
    restored = type(config).from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    rebuilt = type(MODELS[name])(restored)
    assert rebuilt.num_parameters() == MODELS[name].num_parameters()


@pytest.mark.parametrize("name", NAMES)
def test_trains_under_bf16_autocast(name):
    torch.manual_seed(0)
    model = tiny_models()[name]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens = torch.randint(0, VOCAB, (4, 25))
    losses = []
    for _ in range(5):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, VOCAB), tokens[:, 1:].reshape(-1)
        )
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def plain_transformer_like(config, model):
    """A plain HourglassLM ("N@1") carrying `model`'s weights (block names mapped)."""
    plain = HourglassLM(
        HourglassConfig(
            vocab_size=config.vocab_size,
            d_model=config.d_model,
            n_heads=config.n_heads,
            structure=f"{config.n_layers}@1",
            max_length=config.max_length,
        )
    ).double()
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace("blocks.", "hourglass.pre_blocks.", 1)
        if key.startswith("layers."):  # simple hierarchical: layers.{j}.0.* is the only stream
            _, j, _, rest = key.split(".", 3)
            key = f"hourglass.pre_blocks.{j}.{rest}"
        state[key] = value
    plain.load_state_dict(state)
    return plain.eval()


@pytest.mark.parametrize(
    "model",
    [
        LongShortLM(
            LongShortConfig(**TINY, window=64, segment_size=None, rank=None, dual_norm=False)
        ),
        HTransformerLM(HTransformerConfig(**TINY, block_size=64)),
        SimpleHierarchicalLM(
            SimpleHierarchicalConfig(**TINY, compressions=(1,), windows=(None,), token_shift=False)
        ),
    ],
    ids=["long_short_window_covers_no_projection", "h_transformer_one_block", "one_stream"],
)
def test_degenerate_settings_equal_the_plain_transformer(model):
    model = model.double().eval()
    plain = plain_transformer_like(model.config, model)
    tokens = torch.randint(0, VOCAB, (2, 41))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), plain(tokens))


def test_simple_hierarchical_coarse_streams_reach_the_predicting_stream():
    """Gradient test: logits at t depend on every token <= t (through the merges), none after."""
    model = tiny_models()["simple_hierarchical"].double()
    tokens = torch.randint(0, VOCAB, (1, 24))
    embedded = model.embedding(tokens).detach().requires_grad_()
    logits = model.head(model.final_norm(model.body(embedded, None)))
    for t in (0, 7, 15, 23):
        (grad,) = torch.autograd.grad(logits[0, t].sum(), embedded, retain_graph=True)
        reached = grad[0].abs().sum(-1) > 0
        assert reached[: t + 1].all() and not reached[t + 1 :].any()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: LongShortConfig(**TINY, rank=0), "rank must be >= 1"),
        (lambda: LongShortConfig(**TINY, window=0), "window must be >= 1"),
        (lambda: LongShortConfig(**TINY, rank=2, segment_size=None), "segment_size"),
        (lambda: LongShortConfig(**{**TINY, "n_heads": 3}), "does not divide"),
        (lambda: HTransformerConfig(**TINY, block_size=0), "block_size must be >= 1"),
        (lambda: HTransformerConfig(**{**TINY, "n_layers": 0}), "n_layers must be a positive"),
        (
            lambda: SimpleHierarchicalConfig(**TINY, compressions=(2, 4), windows=(None, None)),
            "must start with 1",
        ),
        (
            lambda: SimpleHierarchicalConfig(**TINY, compressions=(1, 4, 2), windows=(None,) * 3),
            "strictly increasing",
        ),
        (
            lambda: SimpleHierarchicalConfig(**TINY, compressions=(1, 2), windows=(None,)),
            "one entry per stream",
        ),
        (
            lambda: SimpleHierarchicalConfig(**TINY, compressions=(1, 2), windows=(0, None)),
            "positive integer or None",
        ),
        (
            lambda: SimpleHierarchicalConfig(**TINY, compressions=(1, 4), windows=(None,) * 2,
                                             strides=(1, 3)),
            "stride 3 for compression 4",
        ),
        (
            lambda: SimpleHierarchicalConfig(**TINY, compressions=(1, 4), windows=(None,) * 2,
                                             strides=(2, 4)),
            "dividing its compression",
        ),
        (
            lambda: SimpleHierarchicalConfig(**TINY, compressions=(1, 4), windows=(None,) * 2,
                                             strides=(1,)),
            "strides needs one entry per stream",
        ),
        (
            lambda: SimpleHierarchicalConfig(**TINY, compressions=(1, 4), windows=(None,) * 2,
                                             stream_widths=(48, 32)),
            r"stream_widths\[0\] must be d_model=32",
        ),
        (
            lambda: SimpleHierarchicalConfig(**TINY, compressions=(1, 4), windows=(None,) * 2,
                                             stream_widths=(32, 30)),
            "even head size",
        ),
        (
            lambda: SimpleHierarchicalConfig.from_dict(
                {**TINY, "compressions": [1, 2], "windows": [None, None]}
            ),
            "saved by an older hourglass_edu",
        ),
        (
            lambda: SimpleHierarchicalConfig(**TINY, version=1),
            "version must be 2",
        ),
        (lambda: LongShortConfig.from_dict({**TINY, "colour": 1}), "unknown LongShortConfig keys"),
        (lambda: LongShortLM(HTransformerConfig(**TINY)), "needs a LongShortConfig"),
    ],
)
def test_bad_configurations_say_what_to_change(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_too_long_input_is_a_clear_error():
    with pytest.raises(ValueError, match="max_length"):
        MODELS["h_transformer"](torch.zeros(1, 65, dtype=torch.long))


def test_library_trainer_trains_and_checkpoints_a_related_model(tmp_path):
    from types import SimpleNamespace

    from hourglass_edu import CharTokenizer
    from hourglass_edu.training import TrainConfig, load_checkpoint, train

    tokenizer = CharTokenizer.from_documents(["the old pond", "a frog jumps in"])
    ids = tokenizer.encode_documents(["the old pond", "a frog jumps in"] * 20)
    data = SimpleNamespace(tokenizer=tokenizer, train_ids=ids, val_ids=ids[:200])
    torch.manual_seed(0)
    model = LongShortLM(
        LongShortConfig(
            **{**TINY, "vocab_size": tokenizer.vocab_size}, window=4, segment_size=4, rank=2
        )
    )
    config = TrainConfig(
        steps=4,
        batch_size=2,
        block_size=16,
        warmup_steps=1,
        eval_every=2,
        eval_batches=1,
        log_every=1,
        progress=False,
        precision="fp32",
    )
    history = train(model, data, config, checkpoint_path=tmp_path / "run.pt")
    assert history.last_val_bpc is not None
    checkpoint = load_checkpoint(tmp_path / "run.pt")
    rebuilt = LongShortLM(LongShortConfig.from_dict(checkpoint["model_config"]))
    rebuilt.load_state_dict(checkpoint["model"])
    tokens = ids[None, :16]
    torch.testing.assert_close(rebuilt.eval()(tokens), model.eval()(tokens))


def test_the_race_warm_up_leaves_training_as_it_would_have_been():
    # train_comparison runs one thrown-away pass before each clock starts; the weights it
    # trains must equal those of a plain train() of the same model from the same seed.
    from types import SimpleNamespace

    from hourglass_edu import CharTokenizer
    from hourglass_edu.related.compare import train_comparison
    from hourglass_edu.training import TrainConfig, train

    tokenizer = CharTokenizer.from_documents(["the old pond", "a frog jumps in"])
    ids = tokenizer.encode_documents(["the old pond", "a frog jumps in"] * 20)
    data = SimpleNamespace(tokenizer=tokenizer, train_ids=ids, val_ids=ids[:200])
    config = TrainConfig(steps=3, batch_size=2, block_size=16, warmup_steps=1, eval_every=3,
                         eval_batches=1, log_every=1, progress=False, precision="fp32")
    trained = []
    for run in ("race", "plain"):
        torch.manual_seed(0)
        model = SimpleHierarchicalLM(SimpleHierarchicalConfig(
            **{**TINY, "vocab_size": tokenizer.vocab_size}, compressions=(1, 2, 4),
            windows=(4, None, 3), dropout=0.1))
        torch.manual_seed(1)
        if run == "race":
            train_comparison({"simple": model}, data, config, eval_batches=1)
        else:
            train(model, data, config)
        trained.append(model.state_dict())
    for key in trained[0]:
        torch.testing.assert_close(trained[0][key], trained[1][key], rtol=0, atol=0)


# ---------------------------------------------------------------- simple hierarchical: the pieces


def test_token_shift_moves_the_second_half_of_the_channels_one_step_later():
    from hourglass_edu.related.simple_hierarchical import token_shift

    x = torch.arange(1.0, 13.0).reshape(1, 3, 4)  # positions 0..2, channels 0..3
    expected = torch.tensor([[[1.0, 2.0, 0.0, 0.0], [5.0, 6.0, 3.0, 4.0], [9.0, 10.0, 7.0, 8.0]]])
    torch.testing.assert_close(token_shift(x), expected)


@pytest.mark.parametrize("compression, stride", [(4, 1), (4, 2), (4, 4), (3, 1)])
def test_compressor_is_the_causal_convolution_mlp_written_out(compression, stride):
    """Compressed q = LayerNorm(W_out SiLU(sum_i W_i x[q*s - (c-1) + i] + b) + b_out), zeros
    before the start: computed by hand from the module's weights."""
    from hourglass_edu.related.simple_hierarchical import CausalCompressor

    torch.manual_seed(7)
    compressor = CausalCompressor(6, 10, compression, stride, expansion=2).double()
    with torch.no_grad():
        compressor.norm.weight.normal_(1.0, 0.3)
        compressor.norm.bias.normal_(0.0, 0.3)
    length = 11
    x = torch.randn(1, length, 6, dtype=torch.float64)
    out = compressor(x)
    assert out.shape == (1, -(-length // stride), 10)
    for q in range(out.shape[1]):
        hidden = compressor.window.bias.clone()
        for i in range(compression):
            token = q * stride - (compression - 1) + i
            if token >= 0:
                hidden = hidden + compressor.window.weight[:, :, i] @ x[0, token]
        mixed = compressor.out.weight[:, :, 0] @ torch.nn.functional.silu(hidden)
        mixed = mixed + compressor.out.bias
        expected = torch.nn.functional.layer_norm(
            mixed, (10,), compressor.norm.weight, compressor.norm.bias
        )
        torch.testing.assert_close(out[0, q], expected)


@pytest.mark.parametrize("axial, window, shift", [(2, None, True), (4, 2, True), (3, 3, False)])
def test_stream_block_attends_inside_its_interleaved_subsequence(axial, window, shift):
    """Gradient test: output q depends on q - m * axial for m = 0 .. (window - 1, plus 2 with the
    token shift: one before attention, one before the feed-forward), never on anything else."""
    from hourglass_edu.blocks import RotaryEmbedding
    from hourglass_edu.related.simple_hierarchical import StreamBlock

    torch.manual_seed(8)
    block = StreamBlock(16, 2, 32, axial=axial, window=window, shift=shift, dropout=0.0,
                        rotary=RotaryEmbedding(8)).double()
    length = 23
    x = torch.randn(1, length, 16, dtype=torch.float64, requires_grad=True)
    out = block(x)
    for q in range(length):
        (grad,) = torch.autograd.grad(out[0, q].sum(), x, retain_graph=True)
        reached = set(torch.nonzero(grad[0].abs().sum(-1)).flatten().tolist())
        steps = (length if window is None else window - 1 + 2 * shift) + 1
        expected = {q - m * axial for m in range(steps) if q - m * axial >= 0}
        assert reached == expected, f"position {q}"


def test_merge_reads_every_stream_the_fine_one_included_and_is_the_reference_mlp():
    from hourglass_edu.related.simple_hierarchical import StreamMerge

    torch.manual_seed(9)
    merge = StreamMerge((8, 12, 4), 8, (1, 2, 4)).double()
    with torch.no_grad():
        merge.contract.weight.normal_()
    length = 7
    streams = [
        torch.randn(1, length, 8, dtype=torch.float64, requires_grad=True),
        torch.randn(1, 4, 12, dtype=torch.float64, requires_grad=True),
        torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True),
    ]
    out = merge(streams, length)
    for t in range(length):
        joined = torch.cat([streams[0][0, t], streams[1][0, t // 2], streams[2][0, t // 4]])
        normed = torch.nn.functional.layer_norm(joined, (24,), merge.norm.weight, merge.norm.bias)
        hidden = torch.nn.functional.silu(merge.expand(normed))
        torch.testing.assert_close(out[0, t], merge.contract(hidden))
    grads = torch.autograd.grad(out[0, 5].sum(), streams)
    assert grads[0][0, 5].abs().sum() > 0, "the merge must read the predicting stream itself"
    assert grads[1][0, 2].abs().sum() > 0 and grads[2][0, 1].abs().sum() > 0


@pytest.mark.parametrize("strides", [(1, 1, 1), (1, 2, 4)])
def test_one_layer_receptive_field_is_the_documented_one(strides):
    """Fine t reads compressed q = t // s of each stream, which sees q - m * (c / s) for
    m = 0 .. window + 1 (token shift), each summarising tokens q*s - (c-1) .. q*s."""
    torch.manual_seed(10)
    compressions, windows = (1, 2, 4), (3, 2, 2)
    config = SimpleHierarchicalConfig(**{**TINY, "n_layers": 1}, compressions=compressions,
                                      windows=windows, strides=strides)
    model = SimpleHierarchicalLM(config).double()
    length = 30
    x = torch.randn(1, length, 32, dtype=torch.float64, requires_grad=True)
    out = model.body(x, None)
    for t in range(length):
        (grad,) = torch.autograd.grad(out[0, t].sum(), x, retain_graph=True)
        reached = set(torch.nonzero(grad[0].abs().sum(-1)).flatten().tolist())
        expected = set()
        for c, w, s in zip(compressions, windows, strides, strict=True):
            q = t // s
            for m in range(w + 2):
                p = q - m * (c // s)
                if p >= 0:
                    expected |= {j for j in range(p * s - (c - 1), p * s + 1) if j >= 0}
        assert reached == expected, f"position {t}"
    if strides == (1, 1, 1):  # stride 1: a contiguous span ending at t, (w + 2) * c long
        assert expected == set(range(length - (2 + 2) * 4, length))


# ---------------------------------------------------------------- cached decoding


def cache_models():
    torch.manual_seed(11)
    hierarchical = dict(compressions=(1, 2, 4), windows=(4, None, 3))
    return {
        "long_short_dual_norm": LongShortLM(
            LongShortConfig(**TINY, window=5, segment_size=4, rank=2)
        ),
        "long_short_rank_equals_segment": LongShortLM(
            LongShortConfig(**TINY, window=3, segment_size=4, rank=4, dual_norm=False)
        ),
        "long_short_window_only": LongShortLM(
            LongShortConfig(**TINY, window=6, segment_size=None, rank=None)
        ),
        "long_short_large_window": LongShortLM(
            LongShortConfig(**TINY, window=40, segment_size=8, rank=3)
        ),
        "simple_hierarchical": SimpleHierarchicalLM(
            SimpleHierarchicalConfig(**TINY, **hierarchical)
        ),
        "simple_hierarchical_strided": SimpleHierarchicalLM(
            SimpleHierarchicalConfig(**TINY, **hierarchical, strides=(1, 2, 4))
        ),
        "simple_hierarchical_mixed": SimpleHierarchicalLM(
            SimpleHierarchicalConfig(**TINY, compressions=(1, 3, 4), windows=(None, 2, 1),
                                     strides=(1, 3, 2), stream_widths=(32, 48, 64))
        ),
    }


def randomise_norms(model):
    """Distinct random LayerNorms (DualLN, compressor and merge norms), so a mix-up would show."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                shape = module.weight.shape
                module.weight.copy_(1 + 0.5 * torch.randn(shape, generator=generator))
                module.bias.copy_(0.5 * torch.randn(shape, generator=generator))
    return model


@pytest.mark.parametrize("name", sorted(cache_models()))
def test_cache_gives_the_logits_of_recomputation(name):
    """Prefill a prompt, then steps of 1, 2 and 3 tokens: every new position's logits equal the
    full forward pass's (Long-Short: and the window cache holds at most window - 1 positions)."""
    model = randomise_norms(cache_models()[name].double().eval())
    tokens = torch.randint(0, VOCAB, (2, 50), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(tokens)
    decoder = model.new_cache()
    pieces, position = [decoder.extend(tokens[:, :9])], 9
    for size in [1, 1, 3, 1, 2] * 8:
        if position >= tokens.shape[1]:
            break
        pieces.append(decoder.extend(tokens[:, position : position + size]))
        position += size
        for cache in getattr(decoder, "caches", []):
            held = 0 if cache.window_keys is None else cache.window_keys.shape[2]
            assert held <= model.config.window - 1
    torch.testing.assert_close(torch.cat(pieces, dim=1), full[:, :position])


def test_long_short_cache_summaries_are_computed_once_per_finished_segment():
    model = cache_models()["long_short_dual_norm"].eval()
    decoder = model.new_cache()
    decoder.extend(torch.zeros(1, 3, dtype=torch.long))
    assert decoder.caches[0].summary_keys is None  # no segment of 4 has ended
    for length in range(4, 14):
        decoder.extend(torch.zeros(1, 1, dtype=torch.long))
        cache = decoder.caches[0]
        assert cache.summary_keys.shape[2] == length // 4 * 2  # rank 2 per finished segment
        assert cache.open_keys.shape[2] == length % 4


def trained_on_a_cycle(model, ids, steps=40):
    """A few optimizer steps on a repeating text, so greedy decoding writes varied text (an
    untrained model repeats one character, which would test little)."""
    ids = torch.tensor(ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(14)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 33, (4,), generator=generator)
        batch = torch.stack([ids[start : start + 33] for start in starts.tolist()])
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(cache_models()))
def test_cached_and_recomputed_greedy_generation_are_identical(name):
    """Greedy, past max_length (the window slides and the cache is prefilled again)."""
    from hourglass_edu import CharTokenizer
    from hourglass_edu.decoding import CachedDecoder, make_decoder
    from hourglass_edu.generation import generate

    tokenizer = CharTokenizer.from_documents(["abcdefghij", "klm"])
    config = type(cache_models()[name].config).from_dict(
        {**cache_models()[name].config.to_dict(), "vocab_size": tokenizer.vocab_size}
    )
    torch.manual_seed(12)
    model = type(cache_models()[name])(config).eval()
    model = trained_on_a_cycle(model, tokenizer.encode("abcdefghijklm" * 8)).eval()
    assert isinstance(make_decoder(model, use_cache=True), CachedDecoder)
    kwargs = dict(temperature=0, stop_at_end=False)
    cached = generate(model, tokenizer, "abc", 90, use_cache=True, **kwargs)
    uncached = generate(model, tokenizer, "abc", 90, use_cache=False, **kwargs)
    assert cached == uncached and len(cached) >= 90  # <eot> is written as five characters
    assert len(set(cached)) >= 5, "a degenerate text would not test much"


def test_a_model_without_a_cache_is_decoded_by_recomputation():
    from hourglass_edu.decoding import CachedDecoder, RecomputeDecoder, make_decoder

    model = MODELS["h_transformer"]
    assert model.new_cache() is None
    assert type(make_decoder(model, use_cache=True)) is RecomputeDecoder
    with pytest.raises(ValueError, match="no cached decoder for"):
        CachedDecoder(model)

"""The related language models: causality, equivalences with the library's transformer, configs."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hourglass_edu import HourglassConfig, HourglassLM
from hourglass_edu.related import (
    HTransformerConfig,
    HTransformerLM,
    LongShortConfig,
    LongShortLM,
    SimpleHierarchicalConfig,
    SimpleHierarchicalLM,
)

VOCAB = 13
TINY = dict(vocab_size=VOCAB, d_model=32, n_heads=2, n_layers=2, max_length=64)


def tiny_models():
    torch.manual_seed(0)
    return {
        "long_short": LongShortLM(LongShortConfig(**TINY, window=5, segment_size=4, rank=2)),
        "h_transformer": HTransformerLM(HTransformerConfig(**TINY, block_size=4)),
        "simple_hierarchical": SimpleHierarchicalLM(
            SimpleHierarchicalConfig(**TINY, compressions=(1, 2, 4), windows=(4, None, 3))
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
        SimpleHierarchicalLM(SimpleHierarchicalConfig(**TINY, compressions=(1,), windows=(None,))),
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


@pytest.mark.parametrize("name", NAMES)
def test_generate_works_and_the_cache_request_falls_back_to_recomputing(name):
    from hourglass_edu import CharTokenizer
    from hourglass_edu.generation import generate

    tokenizer = CharTokenizer.from_documents(["abcdefghij", "klm"])
    torch.manual_seed(0)
    config = type(MODELS[name].config).from_dict(
        {**MODELS[name].config.to_dict(), "vocab_size": tokenizer.vocab_size}
    )
    model = type(MODELS[name])(config).eval()
    cached = generate(model, tokenizer, "abc", 12, seed=3, use_cache=True, stop_at_end=False)
    uncached = generate(model, tokenizer, "abc", 12, seed=3, use_cache=False, stop_at_end=False)
    assert cached == uncached and cached


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

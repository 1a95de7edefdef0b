"""Long-context evaluation: the strided sliding-window protocol of `evaluate_bpc_long_context`.

Checked against a brute-force reference (every character scored on its own, from exactly the
context the protocol promises), against the plain whole-split evaluation (stride == context),
window by window (each target scored once, never with less context than stated), and on bad
arguments. A tiny random HourglassLM is enough: its predictions depend on how much context it
sees, so any off-by-one in the windows changes the number.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from hourglass_edu.cli import main
from hourglass_edu.training import evaluate_bpc, evaluate_bpc_long_context
from hourglass_edu.training.evaluation import long_context_windows

VOCAB = 11
EOT = 0


@pytest.fixture
def model(make_tiny_hourglass):
    """A tiny random hourglass (max_length 64) in eval mode: its predictions depend on how much
    context it sees, which is all these tests need."""
    return make_tiny_hourglass(VOCAB, d_model=16).eval()


def token_stream(n, seed=0):
    """Random tokens with an <eot> (id 0) every 7 tokens or so, starting with one."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n,), generator=generator)
    ids[::7] = EOT
    return ids


def brute_force_bpc(model, ids, context, first_context, count_eot=True):
    """Score target j alone, from ids[j - c : j] with c = min(j, context) -- except that the first
    `first_context` targets keep their window's start at 0, as the protocol's first window does.
    With stride 1 every later target gets exactly `context` tokens."""
    total, count = 0.0, 0
    with torch.no_grad():
        for j in range(1, len(ids)):
            if not count_eot and int(ids[j]) == EOT:
                continue
            start = 0 if j <= first_context else j - context
            logits = model(ids[None, start:j])[0, -1]
            total += nn.functional.cross_entropy(logits, ids[j]).item()
            count += 1
    return total / count / math.log(2)


@pytest.mark.parametrize("count_eot", [True, False])
def test_stride_one_equals_scoring_every_character_on_its_own(model, count_eot):
    ids, context = token_stream(41), 12
    expected = brute_force_bpc(model, ids, context, first_context=context, count_eot=count_eot)
    measured = evaluate_bpc_long_context(model, ids, context=context, stride=1, batch_size=5,
                                         count_eot=count_eot, eot_id=EOT)
    assert measured == pytest.approx(expected, rel=1e-5)


def test_stride_equal_to_context_is_the_plain_whole_split_evaluation(model):
    ids = token_stream(203)
    plain = evaluate_bpc(model, ids, batch_size=3, block_size=50)
    assert evaluate_bpc_long_context(model, ids, context=50, stride=50) == pytest.approx(
        plain, rel=1e-6)


def test_more_context_changes_the_score_and_the_default_stride_is_half(model):
    ids = token_stream(150)
    plain = evaluate_bpc_long_context(model, ids, context=32, stride=32)
    half = evaluate_bpc_long_context(model, ids, context=32, stride=16)
    assert half != pytest.approx(plain, rel=1e-4)  # the windows really overlap
    assert evaluate_bpc_long_context(model, ids, context=32) == half


def test_eot_targets_are_left_out_only_when_asked(model):
    ids = token_stream(100)
    counted = evaluate_bpc_long_context(model, ids, context=20, stride=10)
    without = evaluate_bpc_long_context(model, ids, context=20, stride=10, count_eot=False,
                                        eot_id=EOT)
    assert counted != pytest.approx(without, rel=1e-4)
    # a stream without <eot> targets scores the same either way
    plain_ids = ids.clone()
    plain_ids[1:][plain_ids[1:] == EOT] = 3
    assert evaluate_bpc_long_context(model, plain_ids, context=20, stride=10) == pytest.approx(
        evaluate_bpc_long_context(model, plain_ids, context=20, stride=10, count_eot=False,
                                  eot_id=EOT), rel=1e-6)


@given(n_tokens=st.integers(2, 300), context=st.integers(1, 64), stride_share=st.floats(0, 1))
def test_every_target_is_scored_once_with_the_promised_context(n_tokens, context, stride_share):
    stride = max(1, round(stride_share * context))
    windows = long_context_windows(n_tokens, context, stride)
    length = min(context, n_tokens - 1)
    scored = []
    for start, skip in windows:
        assert 0 <= start and start + length <= n_tokens - 1  # inputs and targets in the stream
        targets = range(start + 1 + skip, start + length + 1)
        for target in targets:
            if start > 0:  # the first window has nothing before it
                assert target - start >= length - stride + 1  # tokens the prediction sees
        scored.extend(targets)
    assert scored == list(range(1, n_tokens))  # each target once, in order


def test_the_model_keeps_its_training_mode(make_tiny_hourglass):
    model = make_tiny_hourglass(VOCAB, d_model=16, max_length=16).train()
    evaluate_bpc_long_context(model, token_stream(200), context=16, stride=4)
    assert model.training


@pytest.mark.parametrize("changes, message", [
    (dict(context=65), "exceeds the model's max_length 64"),
    (dict(context=0), "context must be a positive whole number"),
    (dict(context=16.0), "context must be a positive whole number"),
    (dict(context=16, stride=0), "stride must be a positive whole number"),
    (dict(context=16, stride=17), "stride 17 is larger than context 16"),
    (dict(context=16, count_eot=False), "count_eot=False needs eot_id"),
])
def test_bad_arguments_are_refused_with_what_to_change(model, changes, message):
    with pytest.raises(ValueError, match=message):
        evaluate_bpc_long_context(model, token_stream(100), **changes)


def test_a_stream_too_short_or_of_the_wrong_shape_is_refused(model):
    with pytest.raises(ValueError, match="at least 2 tokens"):
        evaluate_bpc_long_context(model, token_stream(1), context=8)
    with pytest.raises(ValueError, match="1-D token stream"):
        evaluate_bpc_long_context(model, token_stream(20)[None], context=8)


@pytest.mark.parametrize("evaluate", [
    lambda model, ids, **options: evaluate_bpc_long_context(model, ids, context=8, **options),
    lambda model, ids, **options: evaluate_bpc(model, ids, block_size=8, **options),
], ids=["long_context", "evaluate_bpc"])
def test_evaluation_says_what_to_pass_instead_of_failing_inside(model, evaluate):
    with pytest.raises(ValueError, match=r"1-D tensor of token ids, got str; encode the text"):
        evaluate(model, "an old pond")
    with pytest.raises(ValueError, match="model first"):
        evaluate(token_stream(50), model)
    with pytest.raises(ValueError, match="whole-number token ids .* torch.float32"):
        evaluate(model, token_stream(50).float())
    with pytest.raises(ValueError, match="batch_size must be a positive whole number, got 0"):
        evaluate(model, token_stream(50), batch_size=0)
    with pytest.raises(ValueError, match="device 'meta' is not one this library computes on"):
        evaluate(model, token_stream(50), device="meta")


def test_evaluate_bpc_refuses_window_counts_that_score_nothing(model):
    for changes, name in ((dict(max_batches=0), "max_batches"),  # was a ZeroDivisionError
                          (dict(block_size=0), "block_size"), (dict(block_size=2.5), "block_size")):
        with pytest.raises(ValueError, match=f"{name} must be a positive whole number"):
            evaluate_bpc(model, token_stream(50), **changes)


def test_cli_evaluate_refuses_a_context_beyond_the_shipped_model(capsys):
    assert main(["evaluate", "--pretrained", "haiku", "--context", "2048"]) == 2
    assert "exceeds the model's max_length 256" in capsys.readouterr().err


def test_cli_evaluate_scores_a_shipped_model_with_long_context(corpus_dir, monkeypatch, capsys):
    monkeypatch.setenv("HOURGLASS_EDU_DATA", str(corpus_dir))
    assert main(["evaluate", "--pretrained", "haiku", "--context", "64", "--stride", "32",
                 "--max-tokens", "400"]) == 0
    out = capsys.readouterr().out
    assert "context 64" in out and "stride 32" in out and "400 tokens" in out


def test_cli_evaluate_asks_for_a_corpus_when_the_model_does_not_name_one(make_tiny_hourglass,
                                                                        tmp_path, capsys):
    from hourglass_edu.data import CharTokenizer
    from hourglass_edu.model_folders import export_model_folder

    tokenizer = CharTokenizer.from_documents(["abcdefghij"])
    model = make_tiny_hourglass(tokenizer.vocab_size, d_model=16, max_length=32)
    folder = export_model_folder(model, tokenizer, tmp_path / "no-corpus")
    assert main(["evaluate", "--ckpt", str(folder), "--context", "16"]) == 2
    assert "name one with --corpus" in capsys.readouterr().err
    assert main(["evaluate", "--ckpt", str(folder), "--max-tokens", "1"]) == 2
    assert "--max-tokens must be at least 2" in capsys.readouterr().err

"""Tests of the trainer: schedule, optimizer groups, bits per character, history, checkpoints,
exact resume, failure handling (NaN, bad files, config changes, Ctrl-C) and fine-tuning.

Everything runs on a toy corpus with a tiny HourglassLM, so the file needs no real corpora.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import signal

import pytest
import torch
from tiny import losses, tiny_hourglass, tiny_train_config, toy_corpus
from torch import nn

import hourglass_edu.training.trainer as trainer_module
from hourglass_edu.data import prepare_data
from hourglass_edu.training import (
    PRESETS,
    History,
    TrainConfig,
    TrainingDiverged,
    build_model,
    evaluate_bpc,
    extend_vocabulary,
    learning_rate,
    load_checkpoint,
    load_model,
    prepare_finetuning,
    train,
)
from hourglass_edu.training.checkpoints import save_checkpoint
from hourglass_edu.training.optimization import parameter_groups

# ------------------------------------------------------------------------------------------
# Configuration, schedule, optimizer groups


@pytest.mark.parametrize(
    "changes, word",
    [
        (dict(steps=None, minutes=None), "budget"),
        (dict(steps=0), "steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(lr=-1.0), "lr"),
        (dict(precision="fp8"), "precision"),
        (dict(lr=float("inf")), "lr"),
        (dict(grad_clip=0.0), "grad_clip"),
        (dict(eval_batches=0), "eval_batches"),
        (dict(min_lr_ratio=2.0), "min_lr_ratio"),
    ],
)
def test_bad_train_config_says_what_to_change(changes, word):
    with pytest.raises(ValueError, match=word):
        tiny_train_config(**changes)


def test_train_config_round_trips_and_rejects_unknown_fields():
    config = tiny_train_config(grad_clip=None, minutes=1.5)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({**config.to_dict(), "learning_rate": 1.0})


def test_learning_rate_warms_up_then_follows_a_cosine_to_the_floor():
    config = tiny_train_config(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert learning_rate(config, 0, 0.0) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5 * (1 + 1)))
    assert learning_rate(config, 50, 0.0) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down
    assert learning_rate(config, 100, 0.0) == pytest.approx(0.1)
    rates = [learning_rate(config, step, 0.0) for step in range(10, 100)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))  # decays monotonically
    # A time budget drives the cosine by the clock.
    timed = tiny_train_config(steps=None, minutes=2.0, warmup_steps=0, lr=1.0, min_lr_ratio=0.0)
    assert learning_rate(timed, 5, 60.0) == pytest.approx(0.5)
    assert learning_rate(timed, 5, 120.0) == pytest.approx(0.0)


@pytest.mark.parametrize("tie", [False, True])
def test_weight_decay_only_on_linear_weight_matrices(tie):
    model = tiny_hourglass(20, shortening="attention", upsampling="linear", shift_fill="learned",
                       tie_embeddings=tie)
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    plain = {names[id(p)] for p in no_decay["params"]}
    assert len(decayed) + len(plain) == len(list(model.parameters()))
    assert "embedding.weight" in plain and "hourglass.shift.fill" in plain
    if tie:  # one tensor shared with the embedding: it is an embedding, so no decay
        assert "head.weight" not in decayed | plain
        assert any(p is model.head.weight for p in no_decay["params"])
    else:
        assert "head.weight" in decayed
    assert all(("norm" in n or n.endswith(".bias")) for n in plain
               if n not in {"embedding.weight", "hourglass.shift.fill"})
    assert all(n.endswith(".weight") and "norm" not in n for n in decayed)


def test_presets_build_models_that_fit_their_recipes():
    for preset in PRESETS.values():
        model = build_model(preset, vocab_size=100)
        assert preset.train.block_size <= model.config.max_length
    gpu_size = build_model("gpu", vocab_size=141).num_parameters()
    assert 15e6 < gpu_size < 25e6, gpu_size
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("tpu", vocab_size=10)


# ------------------------------------------------------------------------------------------
# Bits per character


class Uniform(nn.Module):
    """Predicts every token with equal probability: exactly log2(vocab) bits per character."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, tokens):
        return self.dummy + torch.zeros(*tokens.shape, self.vocab_size)


def test_bits_per_character_of_a_uniform_model_is_log2_vocab(toy_data):
    vocab = toy_data.tokenizer.vocab_size
    for max_batches in (None, 3):
        bpc = evaluate_bpc(Uniform(vocab), toy_data.val_ids, batch_size=4, block_size=16,
                           max_batches=max_batches)
        assert bpc == pytest.approx(math.log2(vocab), rel=1e-6)


def test_whole_split_bpc_scores_every_target_once(toy_data):
    model = tiny_hourglass(toy_data.tokenizer.vocab_size)
    ids = toy_data.val_ids[:203]
    with torch.no_grad():  # reference: one pass over the whole stream, context capped at 64
        total = 0.0
        for start in range(0, 200, 50):  # windows of 50 score targets start+1 .. start+50
            window = ids[start:start + 51]
            logits = model(window[None, :-1])
            total += nn.functional.cross_entropy(logits[0], window[1:], reduction="sum").item()
        window = ids[-51:]  # the 2 leftover targets, scored with a full-length context
        logits = model(window[None, :-1])
        total += nn.functional.cross_entropy(logits[0, -2:], window[-2:], reduction="sum").item()
    expected = total / 202 / math.log(2)
    measured = evaluate_bpc(model, ids, batch_size=3, block_size=50)
    assert measured == pytest.approx(expected, rel=1e-5)


def test_sampled_evaluation_is_reproducible_and_leaves_global_rng_alone(toy_data):
    model = tiny_hourglass(toy_data.tokenizer.vocab_size, dropout=0.5).train()
    state = torch.get_rng_state()
    first = evaluate_bpc(model, toy_data.val_ids, batch_size=4, block_size=32, max_batches=3)
    assert torch.equal(torch.get_rng_state(), state)  # dropout is off, no global draws
    assert model.training  # mode restored
    assert evaluate_bpc(model, toy_data.val_ids, batch_size=4, block_size=32,
                        max_batches=3) == first


# ------------------------------------------------------------------------------------------
# Training


@pytest.mark.slow
def test_training_lowers_validation_bpc_and_records_history(toy_data):
    model = tiny_hourglass(toy_data.tokenizer.vocab_size)
    before = evaluate_bpc(model, toy_data.val_ids, batch_size=4, block_size=32, max_batches=2)
    history = train(model, toy_data, tiny_train_config(steps=40, eval_every=20, log_every=5))
    assert [r["step"] for r in history.records] == list(range(5, 41, 5))
    assert history.records[-1]["tokens"] == 40 * 4 * 32
    assert history.column("val_bpc") == [history.records[3]["val_bpc"], history.last_val_bpc]
    assert history.last_val_bpc < before - 1.0, (before, history.last_val_bpc)
    restored = History.from_dict(history.to_dict())
    assert restored == history


def test_gradient_accumulation_equals_one_big_batch(toy_data, monkeypatch):
    """A step draws its batch_size x grad_accum windows at once and splits them: 8 x 1, 4 x 2
    and 2 x 4 train on the same windows and make the same update (up to float rounding)."""
    draws = []
    original = trainer_module.sample_batch

    def counted(ids, windows, block_size, generator):
        draws.append(windows)
        return original(ids, windows, block_size, generator)

    monkeypatch.setattr(trainer_module, "sample_batch", counted)
    results = []
    for batch_size, accumulate in ((8, 1), (4, 2), (2, 4)):
        model = tiny_hourglass(toy_data.tokenizer.vocab_size)
        train(model, toy_data, tiny_train_config(steps=1, batch_size=batch_size,
                                                 grad_accum=accumulate, warmup_steps=0,
                                                 eval_every=100))
        results.append(model.state_dict())
    assert draws == [8, 8, 8]  # one draw of the whole step, however it is split
    for other in results[1:]:
        for name in results[0]:
            torch.testing.assert_close(results[0][name], other[name], rtol=1e-5, atol=1e-6,
                                       msg=name)


def test_block_size_longer_than_the_model_is_refused(toy_data):
    model = tiny_hourglass(toy_data.tokenizer.vocab_size)
    with pytest.raises(ValueError, match="max_length"):
        train(model, toy_data, tiny_train_config(block_size=128))


def test_time_budget_stops_training(toy_data):
    model = tiny_hourglass(toy_data.tokenizer.vocab_size)
    history = train(model, toy_data, tiny_train_config(steps=None, minutes=0.02, eval_every=10_000))
    assert 0 < history.records[-1]["step"] and history.records[-1]["elapsed"] >= 1.2
    assert history.records[-1]["val_bpc"] is not None  # the last step always evaluates


# ------------------------------------------------------------------------------------------
# Checkpoints and exact resume


def run_straight(data, config):
    model = tiny_hourglass(data.tokenizer.vocab_size, dropout=0.1)
    return train(model, data, config), model


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_is_exact(toy_data, tmp_path, precision):
    """8 steps straight == 4 steps, save, new objects, resume, 4 more: same losses, same weights.

    Dropout is on, so the global RNG must be restored too. This holds bit for bit on CPU in fp32
    and under bf16 autocast (CPU kernels are deterministic for a fixed thread count).
    """
    config = tiny_train_config(steps=8, precision=precision)
    straight, straight_model = run_straight(toy_data, config)

    path = tmp_path / "run" / "checkpoint.pt"

    def stop_at_four(trainer):  # what Ctrl-C would do, raised right after step 4
        if trainer.step == 4:
            raise KeyboardInterrupt

    first = tiny_hourglass(toy_data.tokenizer.vocab_size, dropout=0.1)
    with pytest.raises(KeyboardInterrupt):
        train(first, toy_data, config, checkpoint_path=path, callbacks=[stop_at_four])
    assert load_checkpoint(path)["step"] == 4

    torch.manual_seed(12345)  # disturb the global RNG: resume must restore it
    random.seed(99)
    resumed_model = tiny_hourglass(toy_data.tokenizer.vocab_size, dropout=0.1, seed=7)
    resumed = train(resumed_model, toy_data, config, checkpoint_path=path, resume=True)
    assert losses(resumed) == losses(straight)
    assert resumed.column("val_bpc") == straight.column("val_bpc")
    for name, value in straight_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name


def test_checkpoint_holds_the_whole_run_and_rebuilds_the_model(toy_data, tmp_path):
    path = tmp_path / "checkpoint.pt"
    model = tiny_hourglass(toy_data.tokenizer.vocab_size)
    train(model, toy_data, tiny_train_config(steps=4), checkpoint_path=path)
    checkpoint = load_checkpoint(tmp_path)  # a directory means DIR/checkpoint.pt
    assert checkpoint["step"] == 4 and checkpoint["train_config"]["steps"] == 4
    assert checkpoint["data"]["corpus"] == "toy"
    assert set(checkpoint["rng"]) >= {"batch", "dropout"}
    assert checkpoint["model_class"] == "HourglassLM"
    assert len(History.from_dict(checkpoint["history"])) == 4
    rebuilt, tokenizer = load_model(path)
    assert tokenizer == toy_data.tokenizer
    tokens = toy_data.val_ids[None, :20]
    torch.testing.assert_close(rebuilt(tokens), model.eval()(tokens))
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away


def test_fresh_run_does_not_overwrite_and_resume_needs_a_checkpoint(toy_data, tmp_path):
    path = tmp_path / "checkpoint.pt"
    model = tiny_hourglass(toy_data.tokenizer.vocab_size)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(model, toy_data, tiny_train_config(), checkpoint_path=path, resume=True)
    train(model, toy_data, tiny_train_config(steps=2), checkpoint_path=path)
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train(model, toy_data, tiny_train_config(steps=2), checkpoint_path=path)
    train(model, toy_data, tiny_train_config(steps=2), checkpoint_path=path, overwrite=True)


def test_resume_with_a_different_configuration_lists_the_differences(toy_data, tmp_path):
    path = tmp_path / "checkpoint.pt"
    train(tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data, tiny_train_config(steps=2),
          checkpoint_path=path)
    other = tiny_hourglass(toy_data.tokenizer.vocab_size, d_model=48)
    with pytest.raises(ValueError) as error:
        train(other, toy_data, tiny_train_config(steps=2, weight_decay=0.5, progress=True),
              checkpoint_path=path, resume=True)
    message = str(error.value)
    assert "refusing to resume" in message
    assert "model.d_model: checkpoint 32, now 48" in message
    assert "train.weight_decay: checkpoint 0.1, now 0.5" in message
    assert "progress" not in message  # display settings may change
    other_data = prepare_data(toy_corpus(seed=1), val_fraction=0.1)
    with pytest.raises(ValueError, match="data.train_tokens"):
        train(tiny_hourglass(other_data.tokenizer.vocab_size), other_data,
              tiny_train_config(steps=2), checkpoint_path=path, resume=True)


def test_resume_accepts_a_new_budget_and_learning_rate_and_says_so(toy_data, tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    model = tiny_hourglass(toy_data.tokenizer.vocab_size)
    train(model, toy_data, tiny_train_config(steps=2), checkpoint_path=path)
    history = train(model, toy_data, tiny_train_config(steps=4, lr=1e-3), checkpoint_path=path,
                    resume=True)
    assert history.records[-1]["step"] == 4
    printed = capsys.readouterr().out
    assert "steps: checkpoint 2, now 4" in printed
    assert "lr: checkpoint 0.003, now 0.001" in printed
    assert load_checkpoint(path)["train_config"]["steps"] == 4


def test_resume_may_add_dropout_and_the_continued_run_trains_with_it(toy_data, tmp_path, capsys):
    """A run that learns its corpus by heart continues with dropout: no weights change shape."""
    path = tmp_path / "checkpoint.pt"
    vocab = toy_data.tokenizer.vocab_size
    train(tiny_hourglass(vocab), toy_data, tiny_train_config(steps=2), checkpoint_path=path)
    weights = load_checkpoint(path)["model"]
    continued = tiny_hourglass(vocab, dropout=0.3)
    train(continued, toy_data, tiny_train_config(steps=4), checkpoint_path=path, resume=True)
    assert "dropout: checkpoint 0.0, now 0.3" in capsys.readouterr().out
    saved = load_checkpoint(path)
    assert saved["step"] == 4 and saved["model_config"]["dropout"] == 0.3
    assert any(not torch.equal(weights[name], saved["model"][name]) for name in weights)
    continued.train()
    tokens = toy_data.val_ids[None, :32]
    assert not torch.equal(continued(tokens), continued(tokens))  # dropout acts in training
    with pytest.raises(ValueError, match="model.d_model"):  # other model settings still refused
        train(tiny_hourglass(vocab, dropout=0.3, d_model=48), toy_data, tiny_train_config(steps=6),
              checkpoint_path=path, resume=True)


class Evil:
    """Unpickling this would create a file: the test checks that loading never gets that far."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unreadable_foreign_and_unsafe_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")

    good = tmp_path / "good.pt"
    save_checkpoint(good, {"format": "hourglass_edu.checkpoint", "version": 1})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(truncated)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="truncated, damaged, not a PyTorch file"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(ValueError, match="not an hourglass_edu checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(ValueError, match="incomplete"):
        load_checkpoint(good)

    marker = tmp_path / "pwned"
    # torch's own format names the unsafe global; a bare pickle is not a torch file at all
    for name, write, refusal in (("evil_torch.pt", torch.save, "refused to load"),
                                 ("evil_pickle.pt", pickle.dump, "not a checkpoint")):
        evil = tmp_path / name
        with open(evil, "wb") as handle:
            write({"format": "hourglass_edu.checkpoint", "payload": Evil(marker)}, handle)
        with pytest.raises(ValueError, match=refusal):
            load_checkpoint(evil)
        assert not marker.exists()
    with open(tmp_path / "evil_pickle.pt", "rb") as handle:  # the file really is dangerous
        pickle.load(handle)
    assert marker.exists()


# ------------------------------------------------------------------------------------------
# Failure handling during training


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(toy_data, tmp_path):
    path = tmp_path / "checkpoint.pt"
    model = tiny_hourglass(toy_data.tokenizer.vocab_size)
    calls = {"n": 0}

    def poison(module, inputs, output):  # the 5th forward pass (step 5) returns NaN logits
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 5 else output

    model.register_forward_hook(poison)
    config = tiny_train_config(steps=10, checkpoint_every=2, eval_every=100)
    with pytest.raises(TrainingDiverged, match=r"step 5: the loss became nan") as error:
        train(model, toy_data, config, checkpoint_path=path)
    assert "step 4" in str(error.value) and "lower learning rate" in str(error.value)
    checkpoint = load_checkpoint(path)
    assert checkpoint["step"] == 4
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # bad update not applied


def test_huge_learning_rate_divergence_is_caught(toy_data):
    model = tiny_hourglass(toy_data.tokenizer.vocab_size)
    config = tiny_train_config(steps=30, lr=1e12, warmup_steps=0, grad_clip=None, eval_every=1000)
    with pytest.raises(TrainingDiverged, match="the loss became|gradient norm"):
        train(model, toy_data, config)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.fixture
def terminal_ctrl_c():
    """Ctrl-C as in an interactive terminal. A runner started in the background (CI, nohup)
    inherits SIGINT as ignored, and the trainer rightly leaves an ignored SIGINT alone."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_interrupt_between_steps_saves_that_step_and_resumes_exactly(
    toy_data, tmp_path, terminal_ctrl_c
):
    config = tiny_train_config(steps=6, eval_every=100)
    straight, _ = run_straight(toy_data, config)
    path = tmp_path / "checkpoint.pt"

    def press_ctrl_c(trainer):  # a real SIGINT: the loop finishes step 3, saves, then raises
        if trainer.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(tiny_hourglass(toy_data.tokenizer.vocab_size, dropout=0.1), toy_data, config,
              checkpoint_path=path, callbacks=[press_ctrl_c])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert load_checkpoint(path)["step"] == 3
    resumed = train(tiny_hourglass(toy_data.tokenizer.vocab_size, dropout=0.1), toy_data, config,
                    checkpoint_path=path, resume=True)
    assert losses(resumed) == losses(straight)


def test_interrupt_inside_a_step_saves_the_previous_step(toy_data, tmp_path):
    config = tiny_train_config(steps=6, eval_every=100)
    straight, _ = run_straight(toy_data, config)
    path = tmp_path / "checkpoint.pt"
    model = tiny_hourglass(toy_data.tokenizer.vocab_size, dropout=0.1)
    calls = {"n": 0}

    def interrupt_forward(module, inputs, output):  # during step 4's forward pass
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt

    model.register_forward_hook(interrupt_forward)
    with pytest.raises(KeyboardInterrupt):
        train(model, toy_data, config, checkpoint_path=path)
    assert load_checkpoint(path)["step"] == 3
    resumed = train(tiny_hourglass(toy_data.tokenizer.vocab_size, dropout=0.1), toy_data, config,
                    checkpoint_path=path, resume=True)
    assert losses(resumed) == losses(straight)


# ------------------------------------------------------------------------------------------
# Fine-tuning


def test_extending_the_vocabulary_keeps_what_the_model_knew(toy_data):
    model = tiny_hourglass(toy_data.tokenizer.vocab_size).eval()
    tokenizer = toy_data.tokenizer
    grown, grown_tokenizer = extend_vocabulary(model, tokenizer, ["é", "!", "a"])  # "a" is known
    assert grown_tokenizer.chars == tokenizer.chars + ("é", "!")
    assert grown.config.vocab_size == tokenizer.vocab_size + 2
    text = "the old pond"
    assert grown_tokenizer.encode(text) == tokenizer.encode(text)
    tokens = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        old, new = model(tokens), grown.eval()(tokens)
    torch.testing.assert_close(new[..., : tokenizer.vocab_size], old, rtol=0, atol=0)
    mean_row = model.embedding.weight.mean(dim=0)
    torch.testing.assert_close(grown.embedding.weight[-1], mean_row)
    torch.testing.assert_close(grown.head.weight[-2], model.head.weight.mean(dim=0))
    same_model, same_tokenizer = extend_vocabulary(model, tokenizer, ["a"])
    assert same_model is model and same_tokenizer is tokenizer


def test_finetuning_adds_missing_characters_and_trains(toy_data, tmp_path):
    base_path = tmp_path / "base.pt"
    train(tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data, tiny_train_config(steps=4),
          checkpoint_path=base_path)
    haiku_like = toy_corpus(name="haiku_like", extra_words=["café!", "Zen"])
    setup = prepare_finetuning(base_path, haiku_like, val_fraction=0.1)
    assert setup.added_chars == sorted("!Zcé")  # "c" is new too: no toy word has it
    assert setup.data.tokenizer.chars[-4:] == tuple(sorted("!Zcé"))
    assert setup.metadata["finetuned_from"]["step"] == 4
    out = tmp_path / "finetuned.pt"
    history = train(setup.model, setup.data, tiny_train_config(steps=4), checkpoint_path=out,
                    metadata=setup.metadata)
    assert history.last_val_bpc is not None
    checkpoint = load_checkpoint(out)
    assert checkpoint["metadata"]["added_chars"] == "!Zcé"
    assert checkpoint["data"]["corpus"] == "haiku_like"
    # Every poem in the stream ends with <eot>, so the model learns to stop after one.
    ids = setup.data.train_ids.tolist()
    assert ids[0] == ids[-1] == setup.data.tokenizer.eot_id
    assert ids.count(setup.data.tokenizer.eot_id) == len(setup.data.train_docs) + 1


def test_training_with_dropout_never_touches_the_global_rng(toy_data):
    model = tiny_hourglass(toy_data.tokenizer.vocab_size, dropout=0.3)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    train(model, toy_data, tiny_train_config(steps=3))
    assert torch.equal(torch.rand(3), expected_next)  # as if training had not happened


def test_build_model_seed_fixes_the_initial_weights_and_leaves_the_global_rng_alone():
    from hourglass_edu.training import build_model

    before = torch.get_rng_state()
    first = build_model("smoke", 20, seed=3).state_dict()
    again = build_model("smoke", 20, seed=3).state_dict()
    other = build_model("smoke", 20, seed=4).state_dict()
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is untouched
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)

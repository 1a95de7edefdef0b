"""Tests of what guards a training step: gradient clipping, fp16 steps the scaler skips, out of
memory, another split of the step's windows on resume, the best checkpoint, the precision and
CUDA speed choices (as pure functions: no GPU here), and the gpu preset's number of passes.

The toy corpus, tiny model and tiny config are tests/tiny.py's.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny import losses, tiny_hourglass, tiny_train_config, toy_corpus

import hourglass_edu.training.evaluation as evaluation_module
import hourglass_edu.training.trainer as trainer_module
from hourglass_edu.cli import main as cli_main
from hourglass_edu.training import (
    PRESETS,
    TrainingDiverged,
    TrainingOutOfMemory,
    learning_rate,
    load_checkpoint,
    load_model,
    prepare_finetuning,
    train,
)
from hourglass_edu.training.checkpoints import best_checkpoint_path, model_checkpoint_file
from hourglass_edu.training.optimization import adamw_options
from hourglass_edu.training.precision import (
    choose_precision,
    fast_fp32_matmuls,
    resolve_precision,
    uses_tf32,
)
from hourglass_edu.training.stopping import OUT_OF_MEMORY
from hourglass_edu.training.trainer import Trainer


def gradient_norm(model) -> float:
    return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()
                         if p.grad is not None))


# ------------------------------------------------------------------------------------------
# Gradient clipping


def test_gradient_clipping_clips_the_norm_the_optimizer_sees(toy_data):
    norms = {}
    for clip in (None, 0.05):
        trainer = Trainer(tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data,
                          tiny_train_config(steps=1, grad_clip=clip, eval_every=100))
        step = trainer.optimizer.step

        def record_then_step(*args, trainer=trainer, step=step, clip=clip, **kwargs):
            norms[clip] = gradient_norm(trainer.model)
            return step(*args, **kwargs)

        trainer.optimizer.step = record_then_step
        trainer.run()
    assert norms[None] > 0.5  # the raw gradient is far above the limit...
    assert norms[0.05] == pytest.approx(0.05, rel=1e-4)  # ...and the clipped one is at it


# ------------------------------------------------------------------------------------------
# fp16: steps the gradient scaler skips are not counted


FIRST_SCALE = 2.0**24


@pytest.fixture
def forced_fp16(monkeypatch):
    """The trainer's fp16 path on the CPU: fp16 autocast and a live GradScaler("cpu") whose first
    loss scale (2**24, 256x torch's default) makes the fp16 gradients overflow until it has been
    halved enough (8 times for the tiny model here)."""
    monkeypatch.setattr(trainer_module, "resolve_precision", lambda *_: "fp16")
    monkeypatch.setattr(evaluation_module, "resolve_precision", lambda precision, _: precision)
    monkeypatch.setattr(trainer_module, "gradient_scaler",
                        lambda *_: torch.amp.GradScaler("cpu", init_scale=FIRST_SCALE))


def test_fp16_steps_the_scaler_skips_are_not_counted_and_are_reported(toy_data, forced_fp16):
    config = tiny_train_config(steps=5, eval_every=100)
    trainer = Trainer(tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data, config)
    assert trainer.precision == "fp16" and trainer.scaler.is_enabled()
    def snapshot(trainer):  # after every call of the step: its counts and a copy of the weights
        weights = [p.detach().clone() for p in trainer.model.parameters()]
        seen.append((trainer.step, trainer.skipped_steps, weights))

    seen: list = []
    snapshot(trainer)  # before the first step
    trainer.callbacks.append(snapshot)
    history = trainer.run()
    skipped = trainer.skipped_steps
    assert skipped > 0, "a 2**24 loss scale should overflow fp16 gradients"
    assert trainer.step == 5 and len(seen) == 1 + 5 + skipped
    assert trainer.tokens_seen == 5 * 4 * 32  # skipped steps add no tokens
    assert trainer.scaler.get_scale() == FIRST_SCALE / 2**skipped  # halved once per skip
    for (step, skips, weights), (before_step, skips_before, before) in zip(seen[1:], seen,
                                                                           strict=False):
        if skips > skips_before:
            assert step == before_step  # no step counted...
            assert all(torch.equal(a, b)  # ...and none made
                       for a, b in zip(weights, before, strict=True))
    # One record per counted step (log_every=1), at the schedule of counted steps only.
    assert [record["step"] for record in history.records] == [1, 2, 3, 4, 5]
    assert [record["lr"] for record in history.records] == [
        learning_rate(config, step, 0.0) for step in range(5)]
    assert history.records[-1]["skipped_steps"] == skipped


@pytest.mark.slow
def test_fp16_run_with_skipped_steps_resumes_exactly(toy_data, tmp_path, forced_fp16):
    config = tiny_train_config(steps=6, eval_every=100)
    straight = train(tiny_hourglass(toy_data.tokenizer.vocab_size, dropout=0.1), toy_data, config)
    path = tmp_path / "checkpoint.pt"

    def stop_at_three(trainer):
        if trainer.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_hourglass(toy_data.tokenizer.vocab_size, dropout=0.1), toy_data, config,
              checkpoint_path=path, callbacks=[stop_at_three])
    assert load_checkpoint(path)["skipped_steps"] > 0
    resumed = train(tiny_hourglass(toy_data.tokenizer.vocab_size, dropout=0.1), toy_data, config,
                    checkpoint_path=path, resume=True)
    assert losses(resumed) == losses(straight)
    assert resumed.records[-1]["skipped_steps"] == straight.records[-1]["skipped_steps"]


def test_fp16_gradient_that_never_becomes_finite_is_a_divergence(toy_data, forced_fp16,
                                                                 monkeypatch):
    # A scale already near the floor, so the test need not wait for ~34 halvings.
    monkeypatch.setattr(trainer_module, "gradient_scaler",
                        lambda *_: torch.amp.GradScaler("cpu", init_scale=2.0**-8))
    model = tiny_hourglass(toy_data.tokenizer.vocab_size)
    model.embedding.weight.register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(TrainingDiverged, match="loss scale down to"):
        train(model, toy_data, tiny_train_config(steps=3, eval_every=100))


# ------------------------------------------------------------------------------------------
# Out of memory


def run_out_of_memory_at_forward(model, call: int):
    calls = {"n": 0}

    def out_of_memory(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == call:
            raise OUT_OF_MEMORY("CUDA out of memory. Tried to allocate 2.00 GiB.\nmore details")

    model.register_forward_hook(out_of_memory)


def test_out_of_memory_is_one_line_that_keeps_the_global_batch(toy_data, tmp_path):
    model = tiny_hourglass(toy_data.tokenizer.vocab_size)
    run_out_of_memory_at_forward(model, call=3)
    config = tiny_train_config(steps=5, batch_size=4, grad_accum=2, checkpoint_every=1,
                               eval_every=100)
    with pytest.raises(TrainingOutOfMemory) as error:
        train(model, toy_data, config, checkpoint_path=tmp_path / "checkpoint.pt")
    message = str(error.value)
    assert "\n" not in message
    assert "`batch_size` 2 `grad_accum` 4" in message and "8 windows" in message
    assert "step 1) is kept" in message and "Tried to allocate 2.00 GiB" in message
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1


@pytest.mark.slow
def test_command_line_prints_out_of_memory_in_one_line(toy_data, tmp_path, monkeypatch, capsys):
    from hourglass_edu.hourglass import HourglassLM

    corpus = tmp_path / "toy.txt"
    corpus.write_text("\n\n".join(toy_corpus().documents), encoding="utf-8")

    def no_memory(self, tokens, *args, **kwargs):
        raise OUT_OF_MEMORY("CUDA out of memory. Tried to allocate 1.00 GiB")

    monkeypatch.setattr(HourglassLM, "forward", no_memory)
    code = cli_main(["train", "--corpus", str(corpus), "--preset", "smoke", "--device", "cpu",
                     "--precision", "fp32", "--no-progress", "--out", str(tmp_path / "run")])
    errors = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith("error: out of memory") and "--grad-accum 2" in errors[0]


# ------------------------------------------------------------------------------------------
# Resuming with another split of the same windows


@pytest.mark.slow
def test_resume_may_split_the_same_windows_into_more_micro_batches(toy_data, tmp_path, capsys):
    """The step draws batch_size x grad_accum windows at once: 4 x 2 and 2 x 4 are the same
    windows, so the resumed run follows the straight one up to float rounding (no dropout:
    dropout's draws follow the micro-batches' shapes)."""
    config = tiny_train_config(steps=8, batch_size=4, grad_accum=2, eval_every=100)
    straight = train(tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data, config)
    path = tmp_path / "checkpoint.pt"

    def stop_at_four(trainer):
        if trainer.step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data, config, checkpoint_path=path,
              callbacks=[stop_at_four])
    with pytest.raises(ValueError, match="train.grad_accum: checkpoint 2, now 4"):
        train(tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data, config.replace(grad_accum=4),
              checkpoint_path=path, resume=True)  # 16 windows a step: another run
    split = config.replace(batch_size=2, grad_accum=4)
    resumed = train(tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data, split,
                    checkpoint_path=path, resume=True)
    assert "resuming with a changed setting: grad_accum" in capsys.readouterr().out
    assert losses(resumed) == pytest.approx(losses(straight), rel=1e-5)
    assert resumed.records[-1]["tokens"] == straight.records[-1]["tokens"]


# ------------------------------------------------------------------------------------------
# The best checkpoint beside the last


@pytest.mark.slow
def test_best_validation_is_kept_beside_the_last_and_models_load_it(toy_data, tmp_path,
                                                                    monkeypatch, capsys):
    scores = iter([3.0, 2.0, 2.5, 2.7])  # validation at steps 2, 4, 6, 8: best at step 4
    monkeypatch.setattr(Trainer, "evaluate", lambda self: next(scores))
    run = tmp_path / "run"
    train(tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data,
          tiny_train_config(steps=8, eval_every=2), checkpoint_path=run / "checkpoint.pt")
    assert best_checkpoint_path(run / "checkpoint.pt") == run / "best.pt"
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "checkpoint.pt")
    assert (best["step"], last["step"]) == (4, 8)
    assert load_checkpoint(run)["step"] == 8  # the run's state (what resume reads) is the last
    assert model_checkpoint_file(run) == run / "best.pt"
    model, _ = load_model(run)  # a run folder's model: the best
    assert all(torch.equal(v, best["model"][k]) for k, v in model.state_dict().items())
    model, _ = load_model(run / "checkpoint.pt")  # the file names the last
    assert all(torch.equal(v, last["model"][k]) for k, v in model.state_dict().items())
    assert prepare_finetuning(run, toy_corpus()).base_checkpoint["step"] == 4
    assert cli_main(["export", "--ckpt", str(run), "--out", str(tmp_path / "folder")]) == 0
    assert "steps: 4" in (tmp_path / "folder" / "README.md").read_text(encoding="utf-8")


def test_fresh_run_never_inherits_an_earlier_runs_best(toy_data, tmp_path):
    run = tmp_path / "run"
    config = tiny_train_config(steps=2, eval_every=100)
    train(tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data, config,
          checkpoint_path=run / "checkpoint.pt")
    (run / "checkpoint.pt").unlink()
    with pytest.raises(ValueError, match="best.pt already holds a checkpoint"):
        train(tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data, config,
              checkpoint_path=run / "checkpoint.pt")
    calls = {"n": 0}

    def interrupt_first_step(module, inputs, output):
        calls["n"] += 1
        raise KeyboardInterrupt

    model = tiny_hourglass(toy_data.tokenizer.vocab_size)
    model.register_forward_hook(interrupt_first_step)
    with pytest.raises(KeyboardInterrupt):  # overwrite, stopped before any evaluation
        train(model, toy_data, config, checkpoint_path=run / "checkpoint.pt", overwrite=True)
    assert not (run / "best.pt").exists()
    assert model_checkpoint_file(run) == run


# ------------------------------------------------------------------------------------------
# Precision, TF32 and fused AdamW: the choices, as functions of the hardware


@pytest.mark.parametrize(("asked", "device", "hardware", "chosen"), [
    ("auto", "cuda", dict(native_bf16=True), "bf16"),  # A100, L4, H100
    ("auto", "cuda", dict(native_bf16=False), "fp16"),  # T4, V100
    ("auto", "cpu", dict(fast_cpu_bf16=False), "fp32"),  # AMD EPYC, AVX2 only
    ("auto", "cpu", dict(fast_cpu_bf16=True), "bf16"),  # Intel with AMX
    ("fp16", "cuda", dict(native_bf16=False), "fp16"),  # chosen by name
    ("fp16", "cuda", dict(native_bf16=True), "fp16"),
    ("bf16", "cuda", dict(native_bf16=True), "bf16"),
    ("bf16", "cpu", dict(fast_cpu_bf16=False), "bf16"),  # asked by name: slow, but allowed
    ("fp32", "cuda", dict(native_bf16=False), "fp32"),
])
def test_precision_follows_the_hardware_and_the_name(asked, device, hardware, chosen):
    assert choose_precision(asked, device, **hardware) == chosen


def test_bf16_on_a_gpu_without_native_bf16_is_refused_with_what_to_use(monkeypatch):
    with pytest.raises(ValueError, match="no native bf16.*use `precision` fp16.*or auto"):
        choose_precision("bf16", "cuda", native_bf16=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: (7, 5))  # a T4
    with pytest.raises(ValueError, match="no native bf16"):
        resolve_precision("bf16", torch.device("cuda"))
    assert resolve_precision("fp16", torch.device("cuda")) == "fp16"
    with pytest.raises(ValueError, match="fp16' needs a CUDA GPU"):
        choose_precision("fp16", "cpu")


def test_command_line_offers_fp16_by_name():
    from hourglass_edu.cli import build_parser

    args = build_parser().parse_args(["train", "--corpus", "haiku", "--out", "runs/x",
                                      "--precision", "fp16"])
    assert args.precision == "fp16"


def test_tf32_and_fused_adamw_only_on_cuda(toy_data):
    assert uses_tf32("cuda") and not uses_tf32("cpu")
    assert adamw_options("cuda") == {"fused": True}
    assert adamw_options("cpu") == {}  # torch's default: the CPU numbers stay as they were
    before = torch.get_float32_matmul_precision()
    with fast_fp32_matmuls(torch.device("cuda")):
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before
    with fast_fp32_matmuls(torch.device("cpu")):
        assert torch.get_float32_matmul_precision() == before
    trainer = Trainer(tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data, tiny_train_config())
    assert not trainer.optimizer.defaults.get("fused")


# ------------------------------------------------------------------------------------------
# The gpu preset's recipe


def test_gpu_preset_makes_about_twenty_passes_over_the_course_corpora():
    recipe = PRESETS["gpu"].train
    per_step = recipe.batch_size * recipe.grad_accum * recipe.block_size
    for train_characters in (2_928_517, 2_813_892):  # haiku, Lovecraft (95% training split)
        passes = recipe.steps * per_step / train_characters
        assert 15 <= passes <= 30, passes
    assert PRESETS["gpu"].model["dropout"] >= 0.2


def test_train_says_what_to_pass_before_touching_the_run_folder(toy_data, tmp_path):
    model = tiny_hourglass(toy_data.tokenizer.vocab_size)
    run = tmp_path / "run"
    for args, message in (
        ((model, "haiku", None), r"data must be a PreparedData such as "
                                 r"prepare_data\('haiku'\), got str"),
        ((model, None, tiny_train_config()), "data must be a PreparedData"),
        (("model", toy_data, None), "model must be a torch module"),
        ((model, toy_data, {"steps": 3}), r"config must be a TrainConfig .*TrainConfig\(\*\*"),
    ):
        with pytest.raises(ValueError, match=message):
            train(*args, checkpoint_path=run / "checkpoint.pt")
        with pytest.raises(ValueError, match=message):
            Trainer(*args)
    assert not run.exists()
    bad_split = type(toy_data)(**{**vars(toy_data), "val_ids": toy_data.val_ids.float()})
    with pytest.raises(ValueError, match="data.val_ids must be a 1-D tensor of token ids"):
        train(model, bad_split, tiny_train_config())

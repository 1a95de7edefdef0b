"""Checkpoints and weights at the loading boundary (issue 32): what torch.load may inflate,
counters, dtypes, finite weights, a damaged run state on resume, and error lines that quote a
file only briefly. Each test is named after what it protects and fails on the old behaviour;
the command line runs in this process (`main([...])`), small and fast."""

from __future__ import annotations

import copy
import pickle
import re
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny import tiny_train_config

import hourglass_edu.loading as loading
import hourglass_edu.training.config as training_config
from hourglass_edu.cli import main
from hourglass_edu.model_folders import export_model_folder, sha256_of
from hourglass_edu.training import TrainConfig, load_checkpoint, load_model, train
from hourglass_edu.training.checkpoints import save_checkpoint
from hourglass_edu.training.trainer import Trainer

LONGEST_LINE = 1_000  # an error line that quotes a file stays one readable line


def small_config(**changes) -> TrainConfig:
    values = dict(steps=1, batch_size=2, block_size=16, warmup_steps=1, eval_every=50,
                  eval_batches=1)
    return tiny_train_config(**{**values, **changes})


@pytest.fixture(scope="module")
def trained(toy_data, make_tiny_hourglass) -> dict:
    """A tiny run's checkpoint after one step (optimizer state filled), as a dict."""
    trainer = Trainer(make_tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data,
                      small_config())
    trainer.train_step()
    return copy.deepcopy(trainer.checkpoint())


def crafted(trained: dict, path: Path, change=None) -> Path:
    """`trained`, changed by `change(checkpoint)`, saved at `path`."""
    checkpoint = copy.deepcopy(trained)
    if change is not None:
        change(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, checkpoint)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def refused_in_one_line(capsys, *argv) -> str:
    """Run the command; it must exit 2 with one short error line, which is returned."""
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert err.count("\n") == 1 and len(err) < LONGEST_LINE, err[:2000]
    return err


def refusal(path: Path) -> str:
    with pytest.raises(ValueError) as raised:
        load_checkpoint(path)
    return str(raised.value)


def first_weight(checkpoint: dict) -> str:
    return next(name for name in checkpoint["model"] if name.endswith("weight"))


# --- case 1: what torch.load would inflate, bounded before it runs -------------------------------


@pytest.fixture
def torch_load_calls(monkeypatch) -> list:
    """Record every torch.load: a refusal of the archive must come before the first."""
    calls: list = []
    real = torch.load

    def recording(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording)
    return calls


def repacked_compressed(source: Path, target: Path) -> Path:
    """`source` with every entry deflated: what torch.load accepts and inflates unchecked."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for entry in old.infolist():
            new.writestr(entry.filename, old.read(entry.filename))
    return target


def test_a_checkpoint_that_would_inflate_inside_torch_load_is_refused_unread(
        trained, tmp_path, capsys, torch_load_calls):
    # 4 MiB of zeros beside the run deflate to a few KB: the file declares far more than it holds
    padded = crafted(trained, tmp_path / "padded.pt",
                     lambda c: c["metadata"].update(padding=torch.zeros(1 << 20)))
    bomb = repacked_compressed(padded, tmp_path / "run" / "checkpoint.pt")
    assert bomb.stat().st_size < padded.stat().st_size // 8
    message = refusal(bomb)
    assert "declares" in message and "packed to inflate" in message, message
    assert torch_load_calls == []
    err = refused_in_one_line(capsys, "sample", "--ckpt", bomb.parent, "--max-new-tokens", "3")
    assert str(bomb) in err and "packed to inflate" in err
    err = refused_in_one_line(capsys, "export", "--ckpt", bomb, "--out", tmp_path / "m")
    assert "packed to inflate" in err and torch_load_calls == []
    assert not (tmp_path / "m").exists()


def test_a_checkpoint_beyond_the_archive_limit_is_refused_unread(trained, tmp_path, monkeypatch,
                                                                 torch_load_calls):
    path = crafted(trained, tmp_path / "checkpoint.pt")
    monkeypatch.setattr(loading, "MAX_ARCHIVE_BYTES", 4096)  # a stored entry larger than this
    message = refusal(path)
    assert "beyond this library's limit 4,096" in message and torch_load_calls == []


def test_a_checkpoint_in_the_legacy_format_is_refused_unread(trained, tmp_path, torch_load_calls):
    path = tmp_path / "legacy.pt"
    torch.save(trained, path, _use_new_zipfile_serialization=False)
    assert "format before PyTorch 1.6" in refusal(path) and torch_load_calls == []


# --- case 2: the base run's batch, checked by the one batch check -------------------------------

BATCH = 10**6  # the issue's: windows of 16 tokens, about 50 GiB of the tiny model's activations


@pytest.fixture
def a_16_gib_machine(monkeypatch):
    monkeypatch.setattr(training_config, "device_memory_bytes", lambda device: 16 << 30)


def test_finetune_refuses_a_base_runs_batch_too_large_to_fit_before_any_step(
        trained, tmp_path, capsys, monkeypatch, a_16_gib_machine):
    def no_step(*args, **kwargs):
        raise AssertionError("a training step ran (and allocated its batch)")

    def huge_batch(checkpoint):  # with the tokens its step would have seen, so all else agrees
        checkpoint["train_config"]["batch_size"] = BATCH
        checkpoint["tokens_seen"] = checkpoint["step"] * BATCH * small_config().block_size

    monkeypatch.setattr(Trainer, "train_step", no_step)
    base = crafted(trained, tmp_path / "base" / "checkpoint.pt", huge_batch)
    corpus = tmp_path / "poems.txt"
    corpus.write_text("\n\n".join(f"old pond {i}\nfrog jumps\nwater" for i in range(60)))
    err = refused_in_one_line(capsys, "finetune", "--from", base, "--corpus", corpus,
                              "--out", tmp_path / "tuned", "--no-progress", "--device", "cpu")
    assert f"--batch-size {BATCH}" in err and "more than the cpu memory (16 GiB)" in err, err


def test_the_trainer_refuses_a_batch_too_large_to_fit_for_every_caller(
        toy_data, make_tiny_hourglass, a_16_gib_machine, monkeypatch):
    model = make_tiny_hourglass(toy_data.tokenizer.vocab_size)
    with pytest.raises(ValueError, match=r"micro-batch, more than the cpu memory \(16 GiB\)"):
        Trainer(model, toy_data, small_config(batch_size=BATCH))
    # where the device's memory is not known, no device holds 10x more
    monkeypatch.setattr(training_config, "device_memory_bytes", lambda device: None)
    with pytest.raises(ValueError, match="micro-batch, more than any device holds"):
        Trainer(model, toy_data, small_config(batch_size=10 * BATCH))
    Trainer(model, toy_data, small_config(batch_size=BATCH))  # and a smaller one is accepted


# --- cases 3 and 4: finite, floating-point weights ----------------------------------------------


def test_nan_or_infinite_weights_in_a_checkpoint_are_refused_naming_the_tensor(trained, tmp_path,
                                                                                capsys):
    name = first_weight(trained)
    for value in (float("nan"), float("inf")):
        path = crafted(trained, tmp_path / f"{value}.pt",
                       lambda c, v=value: c["model"][name].view(-1).__setitem__(3, v))
        message = refusal(path)
        assert f"weight {name} holds 1 NaN or infinite values" in message, message
        err = refused_in_one_line(capsys, "sample", "--ckpt", path, "--max-new-tokens", "3")
        assert str(path) in err and name in err


def rewrite_weights(folder: Path, change) -> None:
    """Change model.safetensors with `change(weights)` and put its sha256 in the card, as a
    careful forger (or a buggy tool) would."""
    from safetensors.torch import load_file

    weights = load_file(folder / "model.safetensors")
    change(weights)
    old = sha256_of(folder / "model.safetensors")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    card = folder / "README.md"
    card.write_text(card.read_text().replace(old, sha256_of(folder / "model.safetensors")))


@pytest.fixture
def model_folder(tmp_path, toy_data, make_tiny_hourglass) -> Path:
    model = make_tiny_hourglass(toy_data.tokenizer.vocab_size)
    return export_model_folder(model, toy_data.tokenizer, tmp_path / "model")


def test_nan_weights_in_a_model_folder_are_refused_naming_file_and_tensor(model_folder, capsys):
    rewrite_weights(model_folder, lambda w: w["head.weight"].view(-1).__setitem__(0, float("nan")))
    err = refused_in_one_line(capsys, "sample", "--ckpt", model_folder, "--max-new-tokens", "3")
    assert str(model_folder / "model.safetensors") in err and "weight head.weight holds 1" in err


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_or_bool_weights_are_refused_with_their_name_and_dtype(
        dtype, trained, model_folder, tmp_path, capsys):
    name = first_weight(trained)
    path = crafted(trained, tmp_path / "ints.pt",
                   lambda c: c["model"].__setitem__(name, c["model"][name].to(dtype)))
    short = str(dtype).removeprefix("torch.")
    assert f"weight {name} is {short}" in refusal(path)

    def to_dtype(weights):
        weights["head.weight"] = weights["head.weight"].to(dtype)

    rewrite_weights(model_folder, to_dtype)
    err = refused_in_one_line(capsys, "sample", "--ckpt", model_folder, "--max-new-tokens", "3")
    assert "weight head.weight is " in err and {"int64": "I64", "bool": "BOOL"}[short] in err


# --- case 5: counters ----------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "said"), [
    ("step", -5, "entry 'step' is -5"),
    ("step", 10**18, "entry 'step' is 1000000000000000000"),
    ("tokens_seen", -1, "entry 'tokens_seen' is -1"),
    ("elapsed", float("inf"), "entry 'elapsed' is inf"),
    ("elapsed", float("nan"), "entry 'elapsed' is nan"),
    ("skipped_steps", -1, "entry 'skipped_steps' is -1"),
    ("step", 7, "but 7 steps of 32 tokens"),  # the step alone changed: tokens_seen disagrees
])
def test_counters_out_of_range_are_refused_when_a_checkpoint_is_read(key, value, said, trained,
                                                                      tmp_path, capsys):
    path = crafted(trained, tmp_path / "run" / "checkpoint.pt",
                   lambda c: c.__setitem__(key, value))
    assert said in refusal(path)
    err = refused_in_one_line(capsys, "export", "--ckpt", path, "--out", tmp_path / "m")
    assert said in err and not (tmp_path / "m").exists()


# --- case 6: a damaged run state on resume, and a damaged best.pt --------------------------------


@pytest.mark.parametrize(("change", "said"), [
    (lambda c: c["rng"].pop("batch"), "entry 'rng' should hold the batch and dropout"),
    (lambda c: c["rng"].__setitem__("batch", torch.zeros(3, dtype=torch.uint8)),
     "entry 'rng' should hold the batch and dropout"),
    (lambda c: c["rng"]["dropout"].__setitem__("cpu", "x"),
     "entry 'rng' should hold the batch and dropout"),
    (lambda c: c["optimizer"].__setitem__("param_groups", "x"), "its parameter groups differ"),
    (lambda c: c["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(2)),
     "optimizer state 'exp_avg' of a parameter of shape"),
    (lambda c: c["optimizer"]["param_groups"][0].pop("betas"),
     "entry 'optimizer' lacks the settings ['betas']"),
    (lambda c: c["optimizer"]["state"].__setitem__(0, "x"),
     "entry 'optimizer' holds 'x' as the state of a parameter"),
])
def test_resume_names_the_damaged_entry_of_the_run_state(change, said, trained, toy_data,
                                                         tmp_path, make_tiny_hourglass):
    path = crafted(trained, tmp_path / "checkpoint.pt", change)
    model = make_tiny_hourglass(toy_data.tokenizer.vocab_size)
    with pytest.raises(ValueError) as raised:
        train(model, toy_data, small_config(steps=2), checkpoint_path=path, resume=True)
    message = str(raised.value)
    assert str(path) in message and said in message, message
    assert "\n" not in message and len(message) < LONGEST_LINE


@pytest.mark.parametrize(("history", "said"), [
    ({"rows": []}, "should hold a list of 'records'"),
    ({"records": [{"step": "1"}]}, "history record 0 should map names to numbers"),
    ({"records": "x"}, "should hold a list of 'records'"),
])
def test_a_damaged_history_is_refused_when_a_checkpoint_is_read(history, said, trained, tmp_path,
                                                                 capsys):
    path = crafted(trained, tmp_path / "run" / "checkpoint.pt",
                   lambda c: c.__setitem__("history", history))
    assert said in refusal(path)
    corpus = tmp_path / "poems.txt"
    corpus.write_text("\n\n".join(f"old pond {i}\nfrog jumps\nwater" for i in range(60)))
    err = refused_in_one_line(capsys, "finetune", "--from", path, "--corpus", corpus, "--out",
                              tmp_path / "tuned", "--no-progress", "--device", "cpu")
    assert said in err


def test_a_truncated_best_pt_points_to_the_runs_checkpoint_pt(trained, tmp_path, capsys):
    run_folder = tmp_path / "run"
    crafted(trained, run_folder / "checkpoint.pt")
    best = crafted(trained, run_folder / "best.pt")
    best.write_bytes(best.read_bytes()[:1000])
    with pytest.raises(ValueError, match=re.escape(f"{run_folder / 'checkpoint.pt'}, may still")):
        load_model(run_folder)
    err = refused_in_one_line(capsys, "sample", "--ckpt", run_folder, "--max-new-tokens", "3")
    assert str(best) in err and "may still be good" in err
    assert load_model(run_folder / "checkpoint.pt")  # and it is


# --- case 7: an error quotes a file briefly ------------------------------------------------------


@pytest.mark.parametrize("change", [
    lambda c: c.__setitem__("version", "9" * 140_000),
    lambda c: c["tokenizer"].__setitem__("format", "x" * 140_000),
    lambda c: c["model_config"].__setitem__("y" * 140_000, 1),
    lambda c: c["train_config"].__setitem__("z" * 140_000, 1),
    lambda c: c["model"].__setitem__("w" * 140_000, torch.zeros(1)),
    lambda c: c["history"]["records"].append({"step": "s" * 140_000}),
])
def test_an_error_quotes_at_most_a_short_piece_of_the_file(change, trained, tmp_path, capsys):
    path = crafted(trained, tmp_path / "checkpoint.pt", change)
    refused_in_one_line(capsys, "sample", "--ckpt", path, "--max-new-tokens", "3")


# --- the audit: more hostile and careless checkpoints --------------------------------------------


def test_a_folder_named_checkpoint_pt_is_named_as_a_folder(tmp_path, capsys):
    (tmp_path / "run" / "checkpoint.pt").mkdir(parents=True)
    err = refused_in_one_line(capsys, "sample", "--ckpt", tmp_path / "run" / "checkpoint.pt")
    assert "is a folder, not a checkpoint file" in err
    err = refused_in_one_line(capsys, "sample", "--ckpt", tmp_path / "run")
    assert "a folder, not a file" in err


def a_zip_of_notes(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")


@pytest.mark.parametrize(("make", "said"), [
    (lambda path: path.write_bytes(b""), "is not a checkpoint (truncated"),
    (lambda path: torch.save([1, 2, 3], path), "holds a list without a 'format'"),
    (lambda path: path.write_bytes(pickle.dumps({"format": "hourglass_edu.checkpoint"})),
     "is not a checkpoint"),
    (lambda path: a_zip_of_notes(path), "is not a checkpoint"),
])
def test_files_that_are_not_checkpoints_are_refused_in_one_line(make, said, tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    make(path)
    err = refused_in_one_line(capsys, "sample", "--ckpt", path)
    assert said in err, err


@pytest.mark.parametrize(("change", "said"), [
    (lambda c: c.__setitem__("data", ["haiku"]), "entry 'data' should be dict"),
    (lambda c: c["data"].__setitem__("corpus", ["haiku"]), "entry 'data' should map names"),
    (lambda c: c.__setitem__("metadata", "x"), "entry 'metadata' should be dict"),
    (lambda c: c.__setitem__("log_window", {"loss": "x"}), "entry 'log_window' should map"),
    (lambda c: c.__setitem__("skipped_steps", 1.5), "entry 'skipped_steps' should be int"),
    (lambda c: c.__setitem__("scaler", [1]), "entry 'scaler' should be dict"),
    (lambda c: c.__setitem__("scaler", {"scale": "x"}), "entry 'scaler' should map names"),
    (lambda c: c["train_config"].__setitem__("batch_size", "eight"),
     "entry 'train_config' is damaged (batch_size must be a positive integer"),
    (lambda c: c["model"].__setitem__(7, torch.zeros(1)), "unexpected 7"),
    (lambda c: c["model"].pop(next(iter(c["model"]))), "the weights do not fit the config "
                                                       "(missing"),
    (lambda c: c["model"].__setitem__("extra.weight", torch.zeros(1)), "unexpected "
                                                                        "'extra.weight'"),
    (lambda c: c["model"].__setitem__(first_weight(c), c["model"][first_weight(c)].to_sparse()),
     "is sparse_coo, not a dense"),
    (lambda c: c["model"].__setitem__(first_weight(c), c["model"][first_weight(c)].T.clone()),
     "has shape"),
    (lambda c: c["model"].__setitem__(first_weight(c), c["model"][first_weight(c)].to(
        torch.complex64)), "is complex64"),
])
def test_damaged_entries_are_refused_when_a_checkpoint_is_read(change, said, trained, tmp_path,
                                                                capsys):
    path = crafted(trained, tmp_path / "run" / "checkpoint.pt", change)
    assert said in refusal(path)
    err = refused_in_one_line(capsys, "export", "--ckpt", path, "--out", tmp_path / "m")
    assert said in err


def test_a_checkpoint_that_passes_every_check_still_loads_and_resumes(trained, toy_data, tmp_path,
                                                                      make_tiny_hourglass):
    path = crafted(trained, tmp_path / "checkpoint.pt")
    assert load_checkpoint(path)["step"] == 1
    model = make_tiny_hourglass(toy_data.tokenizer.vocab_size)
    history = train(model, toy_data, small_config(steps=2), checkpoint_path=path, resume=True)
    assert history.records[-1]["step"] == 2

"""Bad inputs and interruptions, each test named after what it protects (each fails on the old
behaviour). Where a user meets the problem on the command line, the test runs the real command in
a subprocess (`python -m hourglass_edu ...` from the repository root) and checks the exit code,
the first line of stderr, and that no traceback is shown; library tests cover the rest.

Subprocesses use the smoke preset and a handful of steps; the two concurrency tests (the run
folder lock, SIGTERM / Ctrl-C) start real processes and signal them.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
import unicodedata
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny import TOY_WORDS, tiny_hourglass, tiny_related, tiny_train_config, toy_documents

from hourglass_edu import HourglassConfig
from hourglass_edu.cli import main
from hourglass_edu.data import CharTokenizer, prepare_data, split_documents
from hourglass_edu.data.corpora import Corpus
from hourglass_edu.generation import encode_prompt, prompt_as_seen
from hourglass_edu.registry import model_shapes
from hourglass_edu.training import (
    TrainConfig,
    build_model,
    load_checkpoint,
    load_model,
    prepare_finetuning,
    resolve_precision,
    train,
)
from hourglass_edu.training import precision as precision_module
from hourglass_edu.training.checkpoints import save_checkpoint
from hourglass_edu.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")

pytestmark = pytest.mark.slow  # the command line in subprocesses, Ctrl-C, SIGTERM


# ------------------------------------------------------------------------------------------
# Helpers: the command line in a subprocess, toy corpora, tiny runs


def cli(*args, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """Run `python -m hourglass_edu ARGS` from the repository root; no traceback is allowed."""
    result = subprocess.run([sys.executable, "-m", "hourglass_edu", *map(str, args)], cwd=REPO,
                            env=cli_env(), capture_output=True, encoding="utf-8",
                            timeout=timeout, **popen)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def run_main(capsys, *args) -> SimpleNamespace:
    """`main(ARGS)` in this process, shaped like `cli`'s result (exit code, stdout, stderr)."""
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def cli_env() -> dict[str, str]:
    # One thread each: the machine's cores are busy, and a fixed thread count keeps CPU runs
    # deterministic. Unbuffered, so a test can wait for a line a running command printed.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8"}


def start_cli(*args, sigint_default: bool = False) -> subprocess.Popen:
    """Start `python -m hourglass_edu ARGS` without waiting. sigint_default: undo an ignored
    SIGINT inherited from a runner started in the background, so the command sees Ctrl-C."""
    restore = (lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if sigint_default else None
    return subprocess.Popen([sys.executable, "-m", "hourglass_edu", *map(str, args)], cwd=REPO,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            encoding="utf-8", preexec_fn=restore)


def refused(result, *words: str, code: int = 2) -> str:
    """The first line of stderr, after checking the exit code and that it holds every word."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    first = result.stderr.splitlines()[0] if result.stderr else ""
    for word in words:
        assert word in first, first
    return first


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the command ended ({process.returncode}) before {what}: "
                        f"{process.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def write_corpus(path: Path, documents: list[str]) -> Path:
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return path


def small_config(**changes) -> TrainConfig:
    return tiny_train_config(**{"steps": 2, "warmup_steps": 1, "eval_every": 50,
                                "eval_batches": 1, **changes})


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "toy.txt", toy_documents(200))


@pytest.fixture(scope="module")
def tiny_checkpoint(toy_data, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    train(tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data, small_config(),
          checkpoint_path=path)
    return path


def train_args(corpus, out, *more) -> list:
    return ["train", "--corpus", corpus, "--preset", "smoke", "--out", out, "--no-progress",
            "--device", "cpu", *more]


# ------------------------------------------------------------------------------------------
# One run per folder, and the same seed gives the same run


@pytest.mark.slow
def test_a_second_run_into_a_folder_in_training_is_refused(corpus_file, tmp_path):
    out = tmp_path / "run"
    first = start_cli(*train_args(corpus_file, out, "--steps", "100000"))
    try:
        wait_for(lambda: "training for" in first.stdout.readline(), first,
                 "the first run started training")
        second = cli(*train_args(corpus_file, out, "--steps", "3"))
        line = refused(second, str(out), "another run is training into")
        assert "--resume" in line and "another --out" in line
    finally:
        first.terminate()
        first.communicate(timeout=120)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_weights_another_seed_changes_them(corpus_file, tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert cli(*train_args(corpus_file, tmp_path / name, "--steps", "3", "--seed",
                               seed)).returncode == 0
        runs[name] = load_checkpoint(tmp_path / name)["model"]
    assert all(torch.equal(runs["a"][key], runs["b"][key]) for key in runs["a"])
    assert not all(torch.equal(runs["a"][key], runs["c"][key]) for key in runs["a"])
    # the initial weights themselves, and the caller's random state is left alone
    before = torch.get_rng_state()
    first, other = (build_model("smoke", 30, seed=seed).state_dict() for seed in (0, 1))
    assert torch.equal(torch.get_rng_state(), before)
    assert not all(torch.equal(first[key], other[key]) for key in first)


# ------------------------------------------------------------------------------------------
# demo replaces only what an earlier demo wrote


@pytest.mark.slow
def test_demo_replaces_only_its_own_earlier_runs(toy_data, corpus_dir, tmp_path):
    out = tmp_path / "mine"
    train(tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data, small_config(),
          checkpoint_path=out / "checkpoint.pt")
    before = (out / "checkpoint.pt").read_bytes()
    demo = ["demo", "--preset", "smoke", "--steps", "2", "--samples", "1", "--no-progress",
            "--device", "cpu", "--data-dir", corpus_dir]
    refused(cli(*demo, "--out", out), "demo did not write", "another --out")
    assert (out / "checkpoint.pt").read_bytes() == before  # the run is untouched

    earlier_demo = tmp_path / "demo"
    train(tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data, small_config(),
          checkpoint_path=earlier_demo / "checkpoint.pt", metadata={"written_by": "demo"})
    result = cli(*demo, "--out", earlier_demo)
    assert result.returncode == 0, result.stderr
    replaced = load_checkpoint(earlier_demo)
    assert replaced["data"]["corpus"] == "haiku" and replaced["metadata"]["written_by"] == "demo"


# ------------------------------------------------------------------------------------------
# Interruptions: resume rules, the loss-logging window, Ctrl-C and SIGTERM


@pytest.mark.slow
def test_ctrl_c_saves_history_and_resume_may_change_only_budget_and_lr(corpus_file, tmp_path):
    out = tmp_path / "run"
    args = train_args(corpus_file, out)
    running = start_cli(*args, "--steps", "100000", sigint_default=True)
    try:
        wait_for((out / "checkpoint.pt").exists, running, "the first checkpoint")
        running.send_signal(signal.SIGINT)
        _, stderr = running.communicate(timeout=120)
    finally:
        running.kill()
    assert running.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.splitlines()[0].startswith("stopped by Ctrl-C") and "--resume" in stderr
    checkpoint = load_checkpoint(out)
    history = json.loads((out / "history.json").read_text())
    assert history == checkpoint["history"] and history["records"]

    step = checkpoint["step"]
    resumed = cli(*args, "--steps", step + 2, "--lr", "1e-3", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming with a changed setting: steps" in resumed.stdout
    assert "resuming with a changed setting: lr" in resumed.stdout
    assert load_checkpoint(out)["step"] == step + 2
    refused(cli(*args, "--steps", step + 4, "--d-model", "16", "--resume"), "refusing to resume")


def test_an_interrupted_run_logs_the_same_means_as_an_uninterrupted_one(toy_data, tmp_path):
    config = small_config(steps=8, log_every=4, eval_every=100)
    vocab = toy_data.tokenizer.vocab_size
    straight = train(tiny_hourglass(vocab, seed=1), toy_data, config).records

    def stop_at_step_3(trainer):  # mid-window: steps 1-3 of the 4 the first record averages
        trainer.stop_requested = trainer.step == 3

    path = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_hourglass(vocab, seed=1), toy_data, config, checkpoint_path=path,
              callbacks=[stop_at_step_3])
    assert load_checkpoint(path)["log_window"]["steps"] == 3
    resumed = train(tiny_hourglass(vocab), toy_data, config, checkpoint_path=path,
                    resume=True).records
    drop_clock = [{k: v for k, v in r.items() if k != "elapsed"} for r in straight]
    assert [{k: v for k, v in r.items() if k != "elapsed"} for r in resumed] == drop_clock


def test_ctrl_c_while_the_corpus_loads_is_one_line(monkeypatch, capsys, tmp_path):
    import hourglass_edu.data

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hourglass_edu.data, "prepare_data", interrupted)
    code = main(["train", "--corpus", "haiku", "--preset", "smoke", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 130 and err.startswith("interrupted (Ctrl-C)") and err.count("\n") == 1


@pytest.mark.slow
def test_sigterm_during_train_saves_and_exits_143(corpus_file, tmp_path):
    out = tmp_path / "run"
    running = start_cli(*train_args(corpus_file, out, "--steps", "100000"))
    try:
        wait_for((out / "checkpoint.pt").exists, running, "the first checkpoint")
        running.terminate()  # SIGTERM, as a cluster or a hosted notebook sends it
        _, stderr = running.communicate(timeout=120)
    finally:
        running.kill()
    assert running.returncode == 143 and "Traceback" not in stderr, stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("stopped by SIGTERM")
    checkpoint = load_checkpoint(out)
    assert checkpoint["step"] >= 15  # at or after the first checkpoint (smoke: every 15 steps)
    assert json.loads((out / "history.json").read_text()) == checkpoint["history"]


# ------------------------------------------------------------------------------------------
# An --out that cannot be a run folder is refused before the corpus loads


def test_an_out_that_cannot_be_a_run_folder_is_refused_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("notes")
    missing_corpus = tmp_path / "no-such-corpus.txt"  # loading it first would fail otherwise
    for out in (a_file, a_file / "run"):
        result = run_main(capsys, *train_args(missing_corpus, out, "--steps", "2"))
        assert str(out) in refused(result, "run folder", "choose another --out")
        assert result.stdout == ""
        result = run_main(capsys, "finetune", "--from", tmp_path / "missing", "--corpus",
                          missing_corpus, "--out", out, "--steps", "2")
        assert str(out) in refused(result, "run folder")
    result = run_main(capsys, "demo", "--preset", "smoke", "--steps", "2", "--out", a_file / "run")
    refused(result, "run folder")
    assert result.stdout == "" and a_file.read_text() == "notes"


# ------------------------------------------------------------------------------------------
# Crafted, damaged and unsafe checkpoint files


def crafted(toy_data, tmp_path, name: str, change) -> Path:
    """A real checkpoint's dict, changed by `change(checkpoint)`, saved as NAME."""
    checkpoint = Trainer(tiny_hourglass(toy_data.tokenizer.vocab_size), toy_data,
                         small_config()).checkpoint()
    change(checkpoint)
    return save_checkpoint(tmp_path / name, checkpoint)


def test_crafted_checkpoints_are_refused_with_a_reason(toy_data, tmp_path, capsys):
    def setter(section, key, value):
        return lambda checkpoint: checkpoint[section].__setitem__(key, value)

    cases = [
        (lambda c: c.__setitem__("version", "2"), "'version' must be a positive integer"),
        (lambda c: c["tokenizer"].pop("chars"), "tokenizer dict is missing ['chars']"),
        (lambda c: c["tokenizer"].pop("unk"), "tokenizer dict is missing ['unk']"),
        (lambda c: c["tokenizer"]["chars"].pop(), "the tokenizer has"),
        (setter("model_config", "d_model", 10**9), "beyond this library's limit"),
        (setter("model_config", "structure", "100000@1"), "100000 layers in all"),
        (lambda c: c["model_config"].update(d_model=16384, d_ff=65536, structure="1000@1"),
         "parameters, beyond this library's limit"),  # every field within its own limit
        (setter("model_config", "structure", "1@1 1@2 1@1 1@1"), "odd number"),
    ]
    for index, (change, message) in enumerate(cases):
        path = crafted(toy_data, tmp_path, f"crafted{index}.pt", change)
        with pytest.raises(ValueError) as raised:
            load_checkpoint(path)
        assert message in str(raised.value), (index, str(raised.value))
    with pytest.raises(ValueError, match="layers in all"):  # each part within the limit
        crafted_config = {**tiny_hourglass(5).config.to_dict(), "structure": "600@1 600@2 600@1"}
        model_shapes("HourglassLM", crafted_config, "crafted")
    result = run_main(capsys, "sample", "--ckpt", tmp_path / "crafted0.pt", "--max-new-tokens", "3")
    refused(result, "'version' must be a positive integer")


class RunsCommand:
    """Unpickling it runs `os.system` (the classic malicious pickle)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_unsafe_or_damaged_checkpoints_are_refused_without_warnings(tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(256)) * 8)
    marker = tmp_path / "pwned"
    evil = {"format": "hourglass_edu.checkpoint", "payload": RunsCommand(marker)}
    with open(tmp_path / "evil_pickle.pt", "wb") as handle:
        pickle.dump(evil, handle)
    torch.save(evil, tmp_path / "evil_torch.pt")
    with open(tmp_path / "protocol4.pt", "wb") as handle:
        pickle.dump({"format": "hourglass_edu.checkpoint", "version": 2}, handle, protocol=4)

    # torch reads which globals a torch.save file imports without unpickling it; a plain pickle
    # file is not a torch.save file, and torch.load(weights_only=True) refuses it as such
    expected = {"garbage.pt": "not a checkpoint (truncated, damaged, not a PyTorch file",
                "evil_pickle.pt": "not a checkpoint", "evil_torch.pt": "posix.system",
                "protocol4.pt": "not a checkpoint"}
    for name, message in expected.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(ValueError) as raised:
                load_checkpoint(tmp_path / name)
        assert message in str(raised.value) and not caught, (name, caught)
    assert not marker.exists()
    for name in ("garbage.pt", "evil_torch.pt", "protocol4.pt"):
        result = run_main(capsys, "sample", "--ckpt", tmp_path / name, "--max-new-tokens", "3")
        refused(result, expected[name])
        assert "Warning" not in result.stderr
    assert not marker.exists()


# ------------------------------------------------------------------------------------------
# Numbers at the edges


def test_an_infinite_lr_is_refused_and_a_tiny_temperature_is_greedy(tiny_checkpoint, tmp_path,
                                                                     capsys):
    for bad in ("inf", "nan"):
        result = run_main(capsys, *train_args(tmp_path / "not-loaded.txt", tmp_path / "run",
                                              "--lr", bad))
        refused(result, "lr must be a positive finite number")
    outputs = []
    for temperature in ("1e-40", "0"):
        result = run_main(capsys, "sample", "--ckpt", tiny_checkpoint, "--prompt", "the",
                          "--max-new-tokens", "30", "--temperature", temperature,
                          "--no-stop-at-end", "--seed", "1")
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1] and outputs[0].startswith("the")


# ------------------------------------------------------------------------------------------
# A corpus of one document


def test_a_one_document_corpus_gets_advice_that_works(tmp_path, capsys):
    lines = [line for document in toy_documents(12) for line in document.split("\n")]
    one = tmp_path / "one.txt"
    one.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    first = refused(run_main(capsys, *train_args(one, out, "--steps", "2")), "blank lines")
    assert "val_fraction=0" not in first
    refused(run_main(capsys, *train_args(one, out, "--val-fraction", "0")), "--val-fraction")
    several = write_corpus(tmp_path / "several.txt",
                           ["\n".join(lines[start:start + 4]) for start in range(0, 36, 4)])
    result = run_main(capsys, *train_args(several, out, "--steps", "2", "--block-size", "16",
                             "--val-fraction", "0.2"))
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(out)["step"] == 2


# ------------------------------------------------------------------------------------------
# Prompt characters outside the vocabulary, one rule for every model


@pytest.fixture(scope="module")
def unk_checkpoint(tmp_path_factory) -> Path:
    """A model whose tokenizer has <unk> and normalizes to NFC, trained a step."""
    documents = toy_documents(60, suffix=" café")
    tokenizer = CharTokenizer.from_documents(documents, unk=True, normalize="NFC")
    data = prepare_data(Corpus("cafe", documents), val_fraction=0.1, tokenizer=tokenizer)
    path = tmp_path_factory.mktemp("unk") / "checkpoint.pt"
    train(tiny_hourglass(tokenizer.vocab_size), data, small_config(steps=1),
          checkpoint_path=path)
    return path


def test_unknown_prompt_characters_are_refused_even_with_unk(unk_checkpoint, capsys):
    _, tokenizer = load_model(unk_checkpoint)
    assert tokenizer.unk
    with pytest.raises(ValueError, match=r"'✓' \(U\+2713\)"):
        encode_prompt(tokenizer, "the ✓")
    decomposed = unicodedata.normalize("NFD", "café ✓")
    assert prompt_as_seen(tokenizer, decomposed, replace_unknown="") == "café "
    assert tokenizer.unk_id not in encode_prompt(tokenizer, "the ✓", replace_unknown=" ")

    sample = ["sample", "--ckpt", unk_checkpoint, "--max-new-tokens", "5", "--temperature", "0"]
    refused(run_main(capsys, *sample, "--prompt", "the ✓"), "'✓' (U+2713)", "replace_unknown")
    result = run_main(capsys, *sample, "--prompt", decomposed, "--replace-unknown", "")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("café ")  # as the model read it: composed, ✓ dropped


# ------------------------------------------------------------------------------------------
# Structure strings are ASCII digits


def test_structure_digits_must_be_ascii(tmp_path, capsys):
    with pytest.raises(ValueError, match="digits 0-9"):
        HourglassConfig(vocab_size=10, structure="١@١")
    result = run_main(capsys, *train_args(tmp_path / "not-loaded.txt", tmp_path / "run",
                                          "--structure", "١@١"))
    refused(result, "'١@١'", "digits 0-9")


# ------------------------------------------------------------------------------------------
# Every model class trains, samples and fine-tunes


RELATED = {  # class name -> the fields beyond the common ones
    "LongShortLM": dict(window=8, segment_size=8, rank=2),
    "HTransformerLM": dict(block_size=4),
    "SimpleHierarchicalLM": dict(compressions=(1, 2, 4), windows=(8, None, None)),
}


@pytest.mark.parametrize("class_name", sorted(RELATED))
@pytest.mark.slow
def test_every_model_class_samples_and_finetunes(class_name, toy_data, tmp_path):
    base = tmp_path / "base"
    torch.manual_seed(0)
    model = tiny_related(class_name, toy_data.tokenizer.vocab_size, **RELATED[class_name])
    train(model, toy_data, small_config(), checkpoint_path=base / "checkpoint.pt")
    model, _ = load_model(base)
    assert type(model).__name__ == class_name == load_checkpoint(base)["model_class"]
    result = cli("sample", "--ckpt", base, "--prompt", "the", "--max-new-tokens", "10",
                 "--seed", "0")
    assert result.returncode == 0 and result.stdout.startswith("the"), result.stderr
    new_corpus = write_corpus(tmp_path / "new.txt", toy_documents(80, seed=3, suffix=" Zen!"))
    result = cli("finetune", "--from", base, "--corpus", new_corpus, "--out", tmp_path / "ft",
                 "--steps", "2", "--no-progress")
    assert result.returncode == 0, result.stderr
    tuned = load_checkpoint(tmp_path / "ft")
    assert tuned["model_class"] == class_name and tuned["metadata"]["added_chars"] == "!Z"


# ------------------------------------------------------------------------------------------
# Fine-tuning adds the characters of the normalized training documents only


def test_finetuning_adds_only_the_training_characters(tmp_path):
    base_docs = toy_documents(60, suffix=" café")  # composed é
    tokenizer = CharTokenizer.from_documents(base_docs, normalize="NFC")
    base_data = prepare_data(Corpus("base", base_docs), val_fraction=0.1, tokenizer=tokenizer)
    base = tmp_path / "base.pt"
    train(tiny_hourglass(tokenizer.vocab_size), base_data, small_config(steps=1),
          checkpoint_path=base)

    new_docs = toy_documents(60, seed=5, suffix=unicodedata.normalize("NFD", " café!"))
    candidates = (f"{first} ø {second}" for first in TOY_WORDS for second in TOY_WORDS)
    only_in_val = next(doc for doc in candidates  # a document the split puts in validation
                       if doc in split_documents(new_docs + [doc], 0.1)[1])
    setup = prepare_finetuning(base, Corpus("new", new_docs + [only_in_val]), val_fraction=0.1)
    assert setup.added_chars == ["!"]  # not the combining accent (NFC composes it), not ø
    assert setup.dropped_val_chars == ["ø"]
    assert setup.data.tokenizer.chars == (*tokenizer.chars, "!")
    assert "ø" not in "".join(setup.data.val_docs)


# ------------------------------------------------------------------------------------------
# precision="auto"


def test_auto_precision_follows_the_hardware(monkeypatch):
    cuda = torch.device("cuda")
    for capability, expected in (((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_, c=capability: c)
        assert resolve_precision("auto", cuda) == expected
    for fast, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda f=fast: f)
        assert resolve_precision("auto", CPU) == expected
    with pytest.raises(ValueError, match="fp16' needs a CUDA GPU"):
        resolve_precision("fp16", CPU)
    assert not precision_module.gradient_scaler("bf16", CPU).is_enabled()

"""The train / finetune / demo commands, end to end on the real corpora with the smoke preset."""

from __future__ import annotations

import json

import pytest

from hourglass_edu.cli import main
from hourglass_edu.training import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.corpus]  # trains on the real corpora




def run(capsys, *argv):
    code = main([*argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def lovecraft_run(tmp_path_factory, corpus_dir):
    out = tmp_path_factory.mktemp("runs") / "lovecraft"
    code = main(["train", "--corpus", "lovecraft", "--preset", "smoke", "--structure",
                 "1@1 2@3 1@1", "--steps", "4", "--out", str(out), "--no-progress",
                 "--data-dir", str(corpus_dir)])
    assert code == 0
    return out


def test_train_writes_checkpoint_history_and_refuses_to_clobber(lovecraft_run, corpus_dir, capsys):
    checkpoint = load_checkpoint(lovecraft_run / "checkpoint.pt")
    assert checkpoint["step"] == 4 and checkpoint["model_config"]["structure"] == "1@1 2@3 1@1"
    assert checkpoint["data"]["corpus"] == "lovecraft"
    records = json.loads((lovecraft_run / "history.json").read_text())["records"]
    assert records[-1]["step"] == 4 and records[-1]["val_bpc"] is not None
    assert (lovecraft_run / "history.png").stat().st_size > 1000

    common = ["train", "--corpus", "lovecraft", "--preset", "smoke", "--structure", "1@1 2@3 1@1",
              "--out", str(lovecraft_run), "--no-progress", "--data-dir", str(corpus_dir)]
    code, _, err = run(capsys, *common, "--steps", "4")
    assert code == 2 and "already holds a checkpoint" in err and "--resume" in err
    code, _, err = run(capsys, *common, "--steps", "4", "--batch-size", "4", "--resume")
    assert code == 2 and "refusing to resume" in err and "train.batch_size" in err
    code, out, _ = run(capsys, *common, "--steps", "4", "--resume")  # already done: no steps
    assert code == 0 and "done: 4 steps" in out

    code, out, _ = run(capsys, "sample", "--ckpt", str(lovecraft_run), "--prompt", "The",
                       "--max-new-tokens", "20", "--seed", "0")
    assert code == 0 and out.startswith("The")


def test_grad_accum_makes_each_step_see_more_windows(corpus_dir, tmp_path):
    out = tmp_path / "accum"
    code = main(["train", "--corpus", "haiku", "--preset", "smoke", "--structure", "1@1 1@2 1@1",
                 "--steps", "2", "--batch-size", "2", "--block-size", "16", "--grad-accum", "3",
                 "--out", str(out), "--no-progress", "--data-dir", str(corpus_dir)])
    assert code == 0
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["train_config"]["grad_accum"] == 3
    assert checkpoint["tokens_seen"] == 2 * 2 * 16 * 3


def test_finetune_grows_the_vocabulary_for_haiku(lovecraft_run, corpus_dir, tmp_path, capsys):
    out = tmp_path / "haiku"
    code, printed, _ = run(capsys, "finetune", "--from", str(lovecraft_run), "--corpus", "haiku",
                           "--out", str(out), "--steps", "3", "--no-progress", "--data-dir",
                           str(corpus_dir))
    assert code == 0
    checkpoint = load_checkpoint(out)
    added = checkpoint["metadata"]["added_chars"]
    assert added and f"added {len(added)} characters" in printed
    assert checkpoint["metadata"]["finetuned_from"]["corpus"] == "lovecraft"
    base = load_checkpoint(lovecraft_run)
    assert checkpoint["tokenizer"]["chars"] == base["tokenizer"]["chars"] + list(added)
    assert checkpoint["train_config"]["lr"] == pytest.approx(base["train_config"]["lr"] / 3)
    assert printed.count("--- sample") == 3


def test_demo_trains_on_haiku_and_prints_poems(corpus_dir, tmp_path, capsys):
    code, printed, _ = run(capsys, "demo", "--preset", "smoke", "--minutes", "0.03", "--samples",
                           "2", "--out", str(tmp_path / "demo"), "--no-progress", "--data-dir",
                           str(corpus_dir))
    assert code == 0
    assert "bits per character (whole split)" in printed
    assert load_checkpoint(tmp_path / "demo")["data"]["corpus"] == "haiku"
    own, _, shipped = printed.partition("=== the shipped `haiku` model")
    assert own.count("--- sample") == 2
    assert shipped.count("--- sample") == 2  # the shipped model writes with the same seeds
    assert "the model you just trained" in shipped

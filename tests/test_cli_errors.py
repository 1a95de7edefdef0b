"""One line for every error: configs sized before anything is built, one device check, options
checked before any work, a full disk, and files that are not what they claim. Every test runs the
command line in this process (`main([...])`) unless it must mount a file system."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tiny import tiny_hourglass

import hourglass_edu.model_folders as model_folders
from hourglass_edu.cli import build_parser, main
from hourglass_edu.data import CharTokenizer
from hourglass_edu.devices import resolve_device
from hourglass_edu.model_folders import export_model_folder
from hourglass_edu.resampling import SHORTENINGS, UPSAMPLINGS

TOKENIZER = CharTokenizer("abcdefgh \n")


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def one_line(err: str, *words: str) -> None:
    assert err.count("\n") == 1, err
    for word in words:
        assert word in err, err


def tiny_folder(folder: Path) -> Path:
    model = tiny_hourglass(TOKENIZER.vocab_size, d_model=16, max_length=32)
    return export_model_folder(model, TOKENIZER, folder)


@pytest.fixture
def nothing_may_be_built(monkeypatch):
    """Fail the test if a model is built for real, or a weight read, before the refusal."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built or weights read before the checks")

    monkeypatch.setattr(model_folders, "build_model_from_config", refuse)
    monkeypatch.setattr(model_folders, "_read_weights", refuse)


# --- sized before built --------------------------------------------------------------------------


def test_a_400_byte_config_asking_for_terabytes_is_refused_unbuilt(
        shipped_copy, capsys, nothing_may_be_built, rewrite_config):
    rewrite_config(shipped_copy, d_model=16384, d_ff=65536, structure="1000@1", n_heads=8)
    assert (shipped_copy / "config.json").stat().st_size < 500
    code, _, err = run(capsys, "sample", "--ckpt", shipped_copy, "--max-new-tokens", "3")
    assert code == 2
    one_line(err, "parameters, beyond this library's limit")


def test_a_config_that_disagrees_with_the_weights_is_refused_from_the_header(
        shipped_copy, capsys, nothing_may_be_built, rewrite_config):
    rewrite_config(shipped_copy, d_model=1024, n_heads=8)  # 150M parameters: allowed, not built
    code, _, err = run(capsys, "evaluate", "--ckpt", shipped_copy, "--max-tokens", "100")
    assert code == 2
    one_line(err, "model.safetensors: weight", "the config needs")


def test_a_window_too_long_to_run_is_refused(shipped_copy, capsys, nothing_may_be_built,
                                             rewrite_config):
    rewrite_config(shipped_copy, max_length=1 << 20, d_model=1024, n_heads=8)
    code, _, err = run(capsys, "sample", "--ckpt", shipped_copy)
    assert code == 2
    one_line(err, "GiB of activations", "lower max_length")


def test_train_sizes_the_model_and_batch_before_the_corpus_loads(tmp_path, capsys):
    missing = tmp_path / "not-loaded.txt"
    common = ["train", "--corpus", missing, "--preset", "smoke", "--out", tmp_path / "run"]
    code, out, err = run(capsys, *common, "--d-model", "16384", "--structure", "1000@1")
    assert code == 2 and out == ""
    one_line(err, "the model settings", "parameters")
    code, out, err = run(capsys, *common, "--batch-size", "1000000000")
    assert code == 2 and out == ""
    one_line(err, "--batch-size 1000000000", "GiB", "--grad-accum")
    assert not (tmp_path / "run").exists()


# --- one device check ----------------------------------------------------------------------------


def test_device_auto_loads_every_kind_of_model(tmp_path, capsys, corpus_dir, monkeypatch):
    monkeypatch.setenv("HOURGLASS_EDU_DATA", str(corpus_dir))  # evaluate reads the haiku corpus
    folder = tiny_folder(tmp_path / "m")
    for source in (["--pretrained", "haiku"], ["--ckpt", folder]):
        code, out, err = run(capsys, "sample", *source, "--device", "auto", "--max-new-tokens",
                             "5", "--seed", "0")
        assert code == 0, err
    code, out, err = run(capsys, "evaluate", "--pretrained", "haiku", "--device", "auto",
                         "--max-tokens", "200", "--batch-size", "2")
    assert code == 0 and "bits per character" in out, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line_for_every_loader(tmp_path, capsys):
    folder = tiny_folder(tmp_path / "m")
    for command in (["sample", "--pretrained", "haiku"], ["evaluate", "--pretrained", "haiku"],
                    ["sample", "--ckpt", folder], ["evaluate", "--ckpt", folder]):
        code, _, err = run(capsys, *command, "--device", "cuda")
        assert code == 2
        one_line(err, "device 'cuda'", "use cpu")


def test_the_device_check_takes_auto_and_refuses_an_unknown_name():
    # (which types it takes and refuses: tests/test_cli_inputs.py)
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")


# --- options checked before any work -------------------------------------------------------------


def refusal(capsys, *argv) -> str:
    """The stderr of a command that must be refused with exit 2 (by argparse or by main)."""
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit_:  # argparse refuses an option while it reads the command line
        code = exit_.code
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and "Traceback" not in captured.err, captured
    return captured.err


def test_options_out_of_range_are_refused_naming_the_option(tmp_path, capsys):
    missing = tmp_path / "not-loaded.txt"  # none of these may get as far as loading it
    train = ["train", "--corpus", missing, "--preset", "smoke", "--out", tmp_path / "run"]
    demo = ["demo", "--out", tmp_path / "demo", "--preset", "smoke"]
    evaluate = ["evaluate", "--pretrained", "haiku", "--corpus", missing]
    cases = [
        (train + ["--seed", str(2**64)], "argument --seed", "2**63 - 1"),
        (train + ["--seed", "-1"], "argument --seed", "from 0"),
        (train + ["--batch-size", "0"], "argument --batch-size", "at least 1"),
        (train + ["--steps", "-5"], "argument --steps", "at least 1"),
        (train + ["--dropout", "1"], "argument --dropout", "below 1"),
        (train + ["--dropout", "-0.1"], "argument --dropout", "at least 0"),
        (["sample", "--pretrained", "haiku", "--seed", str(2**64)], "argument --seed"),
        (evaluate + ["--batch-size", "0"], "argument --batch-size", "at least 1"),
        (evaluate + ["--val-fraction", "0"], "--val-fraction", "between 0 and 1"),
        (evaluate + ["--context", "8", "--stride", "9"], "--stride 9", "--context 8"),
        (evaluate + ["--split-seed", "-3"], "argument --split-seed"),
        (demo + ["--temperature", "-1"], "argument --temperature", "0 (greedy) or more"),
        (demo + ["--temperature", "nan"], "argument --temperature", "finite"),
        (demo + ["--samples", "-2"], "argument --samples", "at least 0"),
        (demo + ["--seed", str(2**64)], "argument --seed"),
    ]
    for argv, *words in cases:
        one_line(refusal(capsys, *argv), *words)
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo").exists()


def test_the_resampling_options_offer_the_kinds_of_the_library_tables(tmp_path, capsys):
    train = ["train", "--corpus", tmp_path / "not-loaded.txt", "--out", tmp_path / "run"]
    for option, table in (("--shortening", SHORTENINGS), ("--upsampling", UPSAMPLINGS)):
        one_line(refusal(capsys, *train, option, "max"), f"argument {option}",
                 "invalid choice: 'max'", *(repr(kind) for kind in table))
        for kind in table:
            assert build_parser().parse_args([str(arg) for arg in [*train, option, kind]])
    assert not (tmp_path / "run").exists()


# --- model folders that are not what they claim --------------------------------------------------


def test_a_model_folder_without_its_sha256_says_the_check_was_skipped(tmp_path, capsys):
    folder = tiny_folder(tmp_path / "m")
    (folder / "README.md").unlink()
    code, _, err = run(capsys, "sample", "--ckpt", folder, "--max-new-tokens", "3")
    assert code == 0
    one_line(err, "warning:", "no weights_sha256", "without checking")


def test_a_binary_card_names_the_file(tmp_path, capsys):
    folder = tiny_folder(tmp_path / "m")
    (folder / "README.md").write_bytes(b"---\n\xff\xfe\x00garbage")
    code, _, err = run(capsys, "sample", "--ckpt", folder, "--max-new-tokens", "3")
    assert code == 2
    one_line(err, str(folder / "README.md"), "not a text file")


def test_a_model_folder_where_a_training_run_is_needed_says_what_to_pass(tmp_path, capsys):
    folder = tiny_folder(tmp_path / "m")
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc\n\nbad\n")
    for source in (folder, folder / "model.safetensors"):
        code, _, err = run(capsys, "finetune", "--from", source, "--corpus", corpus, "--out",
                           tmp_path / "ft")
        assert code == 2
        one_line(err, "is a model folder", "pass the run folder")
    code, _, err = run(capsys, "sample", "--ckpt", folder / "model.safetensors",
                       "--max-new-tokens", "3")
    assert code == 0, err


# --- a full disk ---------------------------------------------------------------------------------


def fill(disk: Path, leave: int = 4096) -> None:
    """Take all but `leave` bytes of the disk's free space."""
    stats = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    words = "the old pond a frog jumps in sound of water moon".split()
    poems = ["\n".join(" ".join(words[(i + j) % 11] for j in range(4)) for _ in range(2))
             for i in range(80)]
    path = tmp_path / "toy.txt"
    path.write_text("\n\n".join(poems) + "\n")
    return path


def test_dropout_reaches_the_model_and_its_checkpoint(tmp_path, capsys, corpus_file):
    from hourglass_edu.training import load_checkpoint

    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--corpus", corpus_file, "--preset", "smoke", "--steps",
                       "1", "--dropout", "0.15", "--out", out, "--no-progress", "--device", "cpu")
    assert code == 0, err
    assert load_checkpoint(out)["model_config"]["dropout"] == 0.15


def test_a_full_disk_while_training_is_one_line_and_keeps_the_old_checkpoint(
        tmp_path, capsys, small_disk, corpus_file):
    out = small_disk / "run"
    common = ["train", "--corpus", corpus_file, "--preset", "smoke", "--out", out,
              "--no-progress", "--device", "cpu"]
    code, _, err = run(capsys, *common, "--steps", "2")
    assert code == 0, err
    before = (out / "checkpoint.pt").read_bytes()
    fill(small_disk)
    code, _, err = run(capsys, *common, "--steps", "4", "--resume")
    assert code == 2
    one_line(err, "checkpoint.pt", "No space left on device", "the disk is full")
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not [path for path in out.iterdir() if path.name.endswith(".tmp")]


def test_a_full_disk_while_exporting_is_one_line_and_leaves_no_folder(tmp_path, capsys,
                                                                      small_disk, corpus_file):
    run_folder = tmp_path / "run"
    code, _, err = run(capsys, "train", "--corpus", corpus_file, "--preset", "smoke", "--out",
                       run_folder, "--steps", "1", "--no-progress", "--device", "cpu")
    assert code == 0, err
    fill(small_disk)
    code, _, err = run(capsys, "export", "--ckpt", run_folder, "--out", small_disk / "model")
    assert code == 2
    one_line(err, "No space left on device", "the disk is full")
    assert sorted(path.name for path in small_disk.iterdir()) == ["filler"]


def test_out_of_memory_is_one_line_with_what_to_change(tmp_path, capsys, monkeypatch):
    import hourglass_edu.generation as generation

    def allocation_fails(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\n"
                                     "See the documentation for Memory Management")

    monkeypatch.setattr(generation, "stream", allocation_fails)
    code, _, err = run(capsys, "sample", "--ckpt", tiny_folder(tmp_path / "m"))
    assert code == 2
    one_line(err, "CUDA out of memory. Tried to allocate 2.00 GiB.", "another --device")

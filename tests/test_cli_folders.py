"""Folders that cannot be clobbered: what `export`, `train`, `finetune` and `demo` may write over,
what `--force` changes, and that an interrupted or failed write loses nothing. Every test runs the
command line in this process (`main([...])`), where a user meets the rule."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from cli_runs import contents, documents, run, tiny_run
from tiny import tiny_hourglass

from hourglass_edu.model_folders import export_model_folder, read_card
from hourglass_edu.training import load_checkpoint


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("runs") / "small")


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    path = tmp_path / "toy.txt"
    path.write_text("\n\n".join(documents(80, seed=3)) + "\n", encoding="utf-8")
    return path


# --- export --------------------------------------------------------------------------------------


def test_export_refuses_a_folder_of_the_users_own_files_and_force_keeps_the_others(
        run_folder, tmp_path, capsys):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "README.md").write_text("my project")
    (mine / "config.json").write_text('{"mine": true}')
    code, _, err = run(capsys, "export", "--ckpt", run_folder, "--out", mine)
    assert code == 2 and str(mine) in err and "README.md" in err and "--force" in err
    assert contents(mine) == {"README.md": b"my project", "config.json": b'{"mine": true}'}

    (mine / "notes.txt").write_text("keep me")
    code, _, err = run(capsys, "export", "--ckpt", run_folder, "--out", mine, "--force")
    assert code == 0, err
    assert (mine / "notes.txt").read_text() == "keep me"
    assert "weights_sha256" in read_card(mine)


def test_export_over_one_of_our_model_folders_replaces_it_whole(run_folder, tmp_path, capsys):
    folder = tmp_path / "model"
    model = tiny_hourglass(5, d_model=16, max_length=32)
    from hourglass_edu.data import CharTokenizer

    export_model_folder(model, CharTokenizer("abcd"), folder, history={"records": []})
    assert (folder / "history.json").exists()
    code, out, err = run(capsys, "export", "--ckpt", run_folder, "--out", folder, "--force")
    assert code == 0, err  # another model's folder: --force (test_cli_export.py)
    assert "replaced the model folder" in out
    assert not (folder / "history.json").exists()  # the old model's history is gone with it
    assert sorted(contents(folder)) == ["README.md", "config.json", "model.safetensors",
                                        "tokenizer.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging folder left
    code, out, _ = run(capsys, "sample", "--ckpt", folder, "--max-new-tokens", "5", "--seed", "0")
    assert code == 0


def test_export_out_that_is_empty_a_file_or_under_a_file_is_one_line(run_folder, tmp_path,
                                                                     capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("notes")
    for out, words in (("", "--out is empty"), (a_file, "is a file"),
                       (a_file / "model", "is a file, not a folder")):
        code, _, err = run(capsys, "export", "--ckpt", run_folder, "--out", out)
        assert code == 2 and words in err and err.count("\n") == 1, err
    assert a_file.read_text() == "notes" and not Path("config.json").exists()


def test_a_failed_export_leaves_the_old_model_folder_and_no_temporary(run_folder, tmp_path,
                                                                     capsys, monkeypatch):
    import hourglass_edu.model_folders as model_folders

    folder = tmp_path / "model"
    assert run(capsys, "export", "--ckpt", run_folder, "--out", folder)[0] == 0
    before = contents(folder)
    real_write = model_folders.atomic_write

    def disk_full_at_the_card(path, content):
        if Path(path).name == "README.md":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, content)

    monkeypatch.setattr(model_folders, "atomic_write", disk_full_at_the_card)
    code, _, err = run(capsys, "export", "--ckpt", run_folder, "--out", folder,
                       "--dtype", "float16")
    assert code == 2 and "disk is full" in err and err.count("\n") == 1, err
    assert contents(folder) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


# --- train, finetune, demo -----------------------------------------------------------------------


def test_train_refuses_an_empty_out_and_a_folder_that_is_not_a_run(corpus_file, tmp_path,
                                                                   capsys):
    missing = tmp_path / "not-loaded.txt"  # the refusal must come before the corpus loads
    code, out, err = run(capsys, "train", "--corpus", missing, "--preset", "smoke", "--out", "")
    assert code == 2 and "--out is empty" in err and out == ""
    someone = tmp_path / "someone"
    someone.mkdir()
    (someone / "history.json").write_text('{"theirs": 1}')
    for command in (["train", "--corpus", missing, "--preset", "smoke"],
                    ["finetune", "--from", tmp_path / "base", "--corpus", missing],
                    ["demo", "--preset", "smoke", "--steps", "1"]):
        code, out, err = run(capsys, *command, "--out", someone)
        assert code == 2 and "history.json without a checkpoint" in err and "--force" in err
        assert out == ""
    assert contents(someone) == {"history.json": b'{"theirs": 1}'}  # not even a lock file

    code, _, err = run(capsys, "train", "--corpus", corpus_file, "--preset", "smoke", "--steps",
                       "2", "--out", someone, "--force", "--no-progress", "--device", "cpu")
    assert code == 0, err
    assert json.loads((someone / "history.json").read_text())["records"]


def test_finetune_never_writes_into_the_base_runs_folder(tmp_path, corpus_file, capsys):
    base = tiny_run(tmp_path / "base")
    before = (base / "checkpoint.pt").read_bytes()
    for source in (base, base / "checkpoint.pt"):
        for extra in ([], ["--resume"], ["--force"]):
            code, _, err = run(capsys, "finetune", "--from", source, "--corpus", corpus_file,
                               "--out", base, "--steps", "1", *extra)
            assert code == 2 and "folder of the base run" in err, err
    assert (base / "checkpoint.pt").read_bytes() == before


def test_finetune_resume_continues_only_a_finetuning_of_that_base(tmp_path, corpus_file, capsys):
    base, other = tiny_run(tmp_path / "base"), tiny_run(tmp_path / "other", seed=1)
    common = ["--corpus", corpus_file, "--steps", "1", "--no-progress", "--device", "cpu"]
    tuned = tmp_path / "tuned"
    assert run(capsys, "finetune", "--from", base, "--out", tuned, *common)[0] == 0
    before = (tuned / "checkpoint.pt").read_bytes()

    code, _, err = run(capsys, "finetune", "--from", other, "--out", tuned, *common, "--resume")
    assert code == 2 and "fine-tuning run of another base" in err, err
    plain = tiny_run(tmp_path / "plain")
    code, _, err = run(capsys, "finetune", "--from", base, "--out", plain, *common, "--resume")
    assert code == 2 and "not a fine-tuning run" in err, err
    assert (tuned / "checkpoint.pt").read_bytes() == before
    code, out, err = run(capsys, "finetune", "--from", base, "--out", tuned, "--corpus",
                         corpus_file, "--steps", "2", "--no-progress", "--device", "cpu",
                         "--resume")
    assert code == 0, err
    assert load_checkpoint(tuned)["step"] == 2


def test_stale_temporaries_of_killed_writes_are_removed_and_said(tmp_path, corpus_file, capsys):
    out = tiny_run(tmp_path / "run")
    stale = [out / ".checkpoint.pt.abc123.tmp", out / ".history.json.def456.tmp"]
    for path in stale:
        path.write_bytes(b"x" * 1000)
    code, _, err = run(capsys, "train", "--corpus", corpus_file, "--preset", "smoke", "--out",
                       out, "--steps", "1", "--no-progress", "--device", "cpu")
    assert code == 2 and "already holds a checkpoint" in err  # the lock was taken, then refused
    assert "removed 2 temporary file(s) of interrupted writes" in err
    assert not any(path.exists() for path in stale)


def test_demo_refuses_another_run_unless_forced(tmp_path, capsys):
    out = tiny_run(tmp_path / "mine")
    before = (out / "checkpoint.pt").read_bytes()
    code, _, err = run(capsys, "demo", "--preset", "smoke", "--steps", "1", "--out", out,
                       "--samples", "0", "--device", "cpu")
    assert code == 2 and "demo did not write" in err and "--force" in err
    assert (out / "checkpoint.pt").read_bytes() == before

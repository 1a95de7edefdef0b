"""`export` and the folders it writes: what `--force` replaces and never touches, another model's
folder, a training run's lock, an export killed between its two renames, a folder that cannot be
moved (a mount point), links and odd paths; and which model `sample` / `evaluate` load from a
folder that holds both an export and a run. Through the command line (`main([...])`) unless a
test says otherwise."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from cli_runs import contents, documents, run, tiny_run
from tiny import tiny_hourglass

import hourglass_edu.files as files_module
from hourglass_edu import load_model
from hourglass_edu.data import CharTokenizer
from hourglass_edu.model_folders import check_export_folder, export_model_folder, read_card
from hourglass_edu.training import load_checkpoint
from hourglass_edu.training.run_folders import run_folder_lock

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two runs of the same tiny model (seeds 0 and 1)."""
    folder = tmp_path_factory.mktemp("export-runs")
    return {"a": tiny_run(folder / "a"), "a2": tiny_run(folder / "a2", seed=1)}


def another_models_folder(folder: Path) -> Path:
    """A model folder of another structure (a plain 2@1), with the figures an export records."""
    model = tiny_hourglass(5, d_model=16, structure="2@1", max_length=32)
    return export_model_folder(model, CharTokenizer("abcd"), folder,
                               card={"corpus": "toy", "steps": 7, "val_bpc": 3.21})


def hidden_entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def export(capsys, run_folder: Path, out: Path, *extra) -> tuple[int, str, str]:
    return run(capsys, "export", "--ckpt", run_folder, "--out", out, *extra)


def weights(model) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


def same_weights(first, second) -> bool:
    return all(torch.equal(first[name], second[name]) for name in first)


# --- --force never deletes what export did not write ---------------------------------------------


def test_export_force_into_a_folder_of_the_users_own_files_keeps_their_history_json(
        runs, tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "history.json").write_text('{"my": "history"}')
    (home / "notes.txt").write_text("keep me")
    code, out, err = export(capsys, runs["a"], home, "--force")
    assert code == 0, err
    assert (home / "history.json").read_text() == '{"my": "history"}'
    assert (home / "notes.txt").read_text() == "keep me"
    assert "left 2 other entries as they were (history.json, notes.txt)" in out
    assert "replaced no file" in out


def test_export_force_into_a_run_folder_keeps_its_history_and_checkpoints(runs, tmp_path,
                                                                          capsys):
    run_folder = shutil.copytree(runs["a"], tmp_path / "run")
    before = contents(run_folder)
    code, out, err = export(capsys, run_folder, run_folder, "--force")
    assert code == 0, err
    after = contents(run_folder)
    assert {name: after[name] for name in before} == before  # history.json included
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(after)


def test_export_force_refuses_a_run_folder_while_a_training_holds_its_lock(runs, tmp_path,
                                                                         capsys):
    run_folder = shutil.copytree(runs["a"], tmp_path / "run")
    before = contents(run_folder)
    with run_folder_lock(run_folder):  # as a `train` running into it holds it
        code, _, err = export(capsys, runs["a"], run_folder, "--force")
    assert code == 2 and "a training run is writing into" in err and err.count("\n") == 1, err
    after = contents(run_folder)
    assert {name: after[name] for name in before if name != ".lock"} == {
        name: data for name, data in before.items() if name != ".lock"}
    assert "model.safetensors" not in after


# --- another model's folder ----------------------------------------------------------------------


def test_export_over_another_models_folder_asks_for_force_and_says_what_it_replaced(
        runs, tmp_path, capsys):
    folder = tmp_path / "model"
    another_models_folder(folder)
    before = contents(folder)
    code, out, err = export(capsys, runs["a"], folder)
    assert code == 2 and "holds another model (HourglassLM 2@1" in err, err
    assert "7 steps, val bpc 3.210" in err and "--force" in err and err.count("\n") == 1
    assert contents(folder) == before

    code, out, err = export(capsys, runs["a"], folder, "--force")
    assert code == 0, err
    assert f"replaced the model folder {folder} that held HourglassLM 2@1" in out
    assert read_card(folder)["structure"] == "1@1 1@2 1@1"

    code, out, err = export(capsys, runs["a2"], folder)  # the same model, other weights
    assert code == 0, err
    assert "replaced the model folder" in out and "HourglassLM 1@1 1@2 1@1" in out
    assert "val bpc" in out


# --- interrupted exports -------------------------------------------------------------------------


class Killed(BaseException):
    """What `kill -9` does to the exporting process: it stops, and no clean-up code of ours runs
    (the kernel releases its locks)."""


def killed_between_the_renames(monkeypatch):
    real_swap = files_module._swap

    def swap(new, target, old):
        os.replace(target, old)  # the first rename, then the process dies
        raise Killed

    monkeypatch.setattr(files_module, "_swap", swap)
    return real_swap


def test_an_export_killed_between_its_renames_is_put_back_by_the_next_load_and_export(
        runs, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "model"
    assert export(capsys, runs["a"], folder)[0] == 0
    original, _ = load_model(folder)
    real_swap = killed_between_the_renames(monkeypatch)
    with pytest.raises(Killed):
        export(capsys, runs["a2"], folder)
    assert not folder.exists() and hidden_entries(tmp_path)  # the state kill -9 leaves
    monkeypatch.setattr(files_module, "_swap", real_swap)

    code, _, err = run(capsys, "sample", "--ckpt", folder, "--max-new-tokens", "3", "--seed", "0")
    assert code == 0 and f"put {folder} back" in err, err
    assert hidden_entries(tmp_path) == []
    assert same_weights(weights(load_model(folder)[0]), weights(original))

    killed_between_the_renames(monkeypatch)
    with pytest.raises(Killed):
        export(capsys, runs["a2"], folder)
    monkeypatch.setattr(files_module, "_swap", real_swap)
    code, out, err = export(capsys, runs["a2"], folder)
    assert code == 0 and f"put {folder} back" in err and "replaced the model folder" in out
    assert hidden_entries(tmp_path) == []


@pytest.mark.slow  # a subprocess
def test_an_export_killed_by_sigkill_mid_swap_leaves_nothing_the_next_export_cannot_finish(
        runs, tmp_path, capsys):
    folder = tmp_path / "model"
    assert export(capsys, runs["a"], folder)[0] == 0
    before = contents(folder)
    child = textwrap.dedent(f"""
        import os, signal
        real_replace = os.replace
        def replace(source, target):
            real_replace(source, target)
            if os.path.basename(target) == "old":
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
        from hourglass_edu.cli import main
        main(["export", "--ckpt", {str(runs['a2'])!r}, "--out", {str(folder)!r}])
    """)
    result = subprocess.run([sys.executable, "-c", child], cwd=REPO_ROOT, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == -9
    assert not folder.exists() and hidden_entries(tmp_path)  # what kill -9 leaves

    code, _, err = run(capsys, "sample", "--ckpt", folder, "--max-new-tokens", "2")
    assert code == 0 and f"put {folder} back" in err and contents(folder) == before
    assert hidden_entries(tmp_path) == []


# --- folders that cannot be moved ----------------------------------------------------------------


def test_export_into_an_empty_mount_point_writes_in_place_and_leaves_no_hidden_folder(
        runs, tmp_path, capsys, monkeypatch):
    mount = tmp_path / "usb"
    mount.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == mount
                        or real_ismount(path))
    code, out, err = export(capsys, runs["a"], mount)
    assert code == 0, err
    assert "mount point: writing the model's files into it one by one" in out
    assert sorted(contents(mount)) == ["README.md", "config.json", "model.safetensors",
                                       "tokenizer.json"]
    assert hidden_entries(tmp_path) == []
    load_model(mount)


@pytest.mark.slow  # mounts a tmpfs (a subprocess; skipped where mounting is not allowed)
def test_export_into_a_real_mount_point_twice_leaves_no_hidden_folder(
        runs, tmp_path, capsys, small_disk):
    for source in (runs["a"], runs["a2"]):
        code, out, err = export(capsys, source, small_disk)
        assert code == 0, err
        assert "is a mount point: writing the model's files into it one by one" in out
        assert hidden_entries(tmp_path) == [] and hidden_entries(small_disk) == []
    expected = load_checkpoint(runs["a2"] / "best.pt")["model"]
    assert same_weights(expected, weights(load_model(small_disk)[0]))


def test_export_over_a_model_folder_that_cannot_be_moved_replaces_its_files_in_place(
        runs, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "model"
    assert export(capsys, runs["a"], folder)[0] == 0
    (folder / "history.json").write_text('{"records": []}')  # the old model's, export wrote it
    real_replace = os.replace

    def busy(source, target):
        if Path(source) == folder:
            raise OSError(errno.EBUSY, "Device or resource busy", str(source))
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", busy)
    code, out, err = export(capsys, runs["a2"], folder)
    assert code == 0, err
    assert "cannot be moved (Device or resource busy): writing the model's files" in out
    assert sorted(contents(folder)) == ["README.md", "config.json", "model.safetensors",
                                        "tokenizer.json"]
    assert hidden_entries(tmp_path) == []
    expected = load_checkpoint(runs["a2"] / "best.pt")["model"]
    assert same_weights(expected, weights(load_model(folder)[0]))


# --- a folder holding both an export and a run ---------------------------------------------------


def test_a_run_folder_with_an_older_export_loads_the_newer_checkpoint_and_says_which(
        runs, tmp_path, capsys):
    folder = shutil.copytree(runs["a"], tmp_path / "run")
    assert export(capsys, runs["a2"], folder, "--force")[0] == 0  # another run's weights
    exported = weights(load_model(folder / "model.safetensors")[0])
    newer = os.stat(folder / "model.safetensors").st_mtime + 60
    for name in ("best.pt", "checkpoint.pt"):
        os.utime(folder / name, (newer, newer))

    with pytest.warns(UserWarning, match="holds both an exported model .* loading best.pt, the "
                      "newer; name .*model.safetensors to load the other"):
        model, _ = load_model(folder)
    assert same_weights(load_checkpoint(folder / "best.pt")["model"], weights(model))
    code, _, err = run(capsys, "sample", "--ckpt", folder, "--max-new-tokens", "2")
    assert code == 0 and "loading best.pt, the newer" in err, err

    os.utime(folder / "model.safetensors", (newer + 60, newer + 60))
    with pytest.warns(UserWarning, match="loading model.safetensors, the newer"):
        model, _ = load_model(folder)
    assert same_weights(exported, weights(model))


def test_evaluate_of_a_run_folder_scores_its_best_checkpoint_and_says_which_of_two(
        runs, tmp_path, capsys):
    folder = shutil.copytree(runs["a"], tmp_path / "run")
    shutil.copy(runs["a2"] / "best.pt", folder / "best.pt")  # best and last differ
    corpus = tmp_path / "toy.txt"
    corpus.write_text("\n\n".join(documents(80, seed=3)) + "\n", encoding="utf-8")
    common = ["--corpus", corpus, "--max-tokens", "64", "--context", "16"]
    scores = {}
    for source in (folder, folder / "best.pt", folder / "checkpoint.pt"):
        code, out, err = run(capsys, "evaluate", "--ckpt", source, *common)
        assert code == 0, err
        scores[source] = out.split()[0]
    assert scores[folder] == scores[folder / "best.pt"] != scores[folder / "checkpoint.pt"]

    assert export(capsys, runs["a2"], folder, "--force")[0] == 0
    code, out, err = run(capsys, "evaluate", "--ckpt", folder, *common)
    assert code == 0 and "loading model.safetensors, the newer" in err, err


# --- odd --out paths -----------------------------------------------------------------------------


def test_export_to_dot_inside_a_model_folder_replaces_it_and_leaves_nothing_hidden(
        runs, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "model"
    assert export(capsys, runs["a"], folder)[0] == 0
    monkeypatch.chdir(folder)
    code, out, err = export(capsys, runs["a2"], ".")
    monkeypatch.chdir(tmp_path)  # the folder that was "." is gone
    assert code == 0, err
    assert "replaced the model folder" in out
    assert hidden_entries(tmp_path) == [] and hidden_entries(folder) == []
    assert sorted(contents(folder)) == ["README.md", "config.json", "model.safetensors",
                                        "tokenizer.json"]


def test_export_to_a_link_replaces_the_folder_it_points_to_and_keeps_the_link(
        runs, tmp_path, capsys):
    real = tmp_path / "v1"
    assert export(capsys, runs["a"], real)[0] == 0
    link = tmp_path / "current"
    link.symlink_to(real, target_is_directory=True)
    code, _, err = export(capsys, runs["a2"], link)
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == real
    expected = load_checkpoint(runs["a2"] / "best.pt")["model"]
    assert same_weights(expected, weights(load_model(real)[0]))


def test_export_with_a_long_folder_name_is_written(runs, tmp_path, capsys):
    folder = tmp_path / ("m" * 250)  # a legal name; its work folder's must fit too
    code, _, err = export(capsys, runs["a"], folder)
    assert code == 0, err
    assert (folder / "model.safetensors").is_file() and hidden_entries(tmp_path) == []


def test_the_root_folder_is_refused_even_with_force():
    with pytest.raises(ValueError, match="root of the file system"):
        check_export_folder("/", force=True)


# --- what stands where a model file goes ---------------------------------------------------------


def test_export_force_refuses_a_folder_or_link_where_a_model_file_goes_before_writing(
        runs, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"my weights")
    (mine / "config.json").mkdir()
    code, _, err = export(capsys, runs["a"], mine, "--force")
    assert code == 2 and "config.json" in err and "folder" in err and err.count("\n") == 1, err
    assert (mine / "model.safetensors").read_bytes() == b"my weights"

    (mine / "config.json").rmdir()
    (tmp_path / "notes.md").write_text("my notes")
    (mine / "README.md").symlink_to(tmp_path / "notes.md")
    code, _, err = export(capsys, runs["a"], mine, "--force")
    assert code == 2 and "README.md" in err and "symbolic link" in err, err
    assert (mine / "README.md").is_symlink() and (mine / "model.safetensors").read_bytes() == (
        b"my weights")


def test_a_full_disk_during_export_force_changes_none_of_the_users_files(
        runs, tmp_path, capsys, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md"):
        (mine / name).write_text(f"my {name}")
    before = contents(mine)
    real_mkstemp = files_module.tempfile.mkstemp

    def full_at_the_card(*args, **kwargs):
        if kwargs.get("prefix", "").startswith(".README.md."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(files_module.tempfile, "mkstemp", full_at_the_card)
    code, _, err = export(capsys, runs["a"], mine, "--force")
    assert code == 2 and "disk is full" in err, err
    assert contents(mine) == before


def test_a_model_folder_holding_a_users_hidden_folder_is_not_replaced_without_force(
        runs, tmp_path, capsys):
    folder = tmp_path / "model"
    assert export(capsys, runs["a"], folder)[0] == 0
    (folder / ".drafts.tmp").mkdir()  # named like a temporary, but a folder of the user's
    (folder / ".drafts.tmp" / "poem.txt").write_text("mine")
    code, _, err = export(capsys, runs["a2"], folder)
    assert code == 2 and ".drafts.tmp" in err, err
    assert (folder / ".drafts.tmp" / "poem.txt").read_text() == "mine"


def test_a_symlink_named_like_a_temporary_in_a_run_folder_is_left_alone_and_said(
        tmp_path, capsys):
    out = tiny_run(tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("mine")
    (out / ".x.tmp").symlink_to(elsewhere, target_is_directory=True)
    corpus = tmp_path / "toy.txt"
    corpus.write_text("\n\n".join(documents(80, seed=3)) + "\n", encoding="utf-8")
    code, _, err = run(capsys, "train", "--corpus", corpus, "--preset", "smoke", "--out", out,
                       "--steps", "1", "--no-progress", "--device", "cpu")
    assert code == 2 and "already holds a checkpoint" in err, err  # locked, then refused
    assert "left" in err and ".x.tmp alone (a symbolic link" in err
    assert (out / ".x.tmp").is_symlink() and (elsewhere / "precious.txt").read_text() == "mine"


def test_the_docs_list_exactly_the_files_export_force_writes(runs, tmp_path, capsys):
    docs = (REPO_ROOT / "docs" / "files-and-folders.md").read_text(encoding="utf-8")
    section = docs.split("### What `export --force` replaces")[1].split("\n### ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| anything else"))
    listed = {name for name in row.split(" are written")[0].split("`")[1::2]}
    assert export(capsys, runs["a"], tmp_path / "model")[0] == 0
    assert listed == set(contents(tmp_path / "model"))


def test_export_force_beside_a_folder_named_lock_and_odd_names_says_them_on_one_line(
        runs, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / ".lock").mkdir()  # a folder of the user's, not a run's lock
    (mine / "a\nb.txt").write_text("x")
    code, out, err = export(capsys, runs["a"], mine, "--force")
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("wrote the model's"))
    assert line.endswith("left 2 other entries as they were (.lock, a\\nb.txt)")
    assert (mine / "a\nb.txt").read_text() == "x" and (mine / ".lock").is_dir()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_export_where_no_folder_can_be_made_is_one_line_naming_out(runs, capsys):
    code, _, err = export(capsys, runs["a"], "/proc/hourglass-model")
    assert code == 2 and err.startswith("error: /proc/hourglass-model: cannot create a folder")
    assert "Errno" not in err and err.count("\n") == 1, err


def test_a_crafted_card_is_described_in_one_short_line(runs, tmp_path, capsys):
    from hourglass_edu.model_folders import describe_model_folder

    folder = tmp_path / "model"
    assert export(capsys, runs["a"], folder)[0] == 0
    card = (folder / "README.md").read_text()
    for steps, name in (("true", '"x"'), ("9" * 5000, '"' + "long\\nname " * 1000 + '"')):
        (folder / "README.md").write_text(card.replace("steps: 2", f"steps: {steps}")
                                          .replace("corpus:", f"name: {name}\ncorpus:"))
        line = describe_model_folder(folder)
        assert "\n" not in line and len(line) < 200 and "1 steps" not in line, line

"""Atomic writes: the target is the old file or the complete new one, and no temporary is left;
a folder replaced whole, or put back after its replacement was killed."""

from __future__ import annotations

import errno
import os

import pytest

from hourglass_edu.files import atomic_write, atomic_writer


def test_atomic_write_creates_folders_and_replaces_whole_files(tmp_path):
    target = tmp_path / "a" / "b" / "note.txt"
    atomic_write(target, "first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["note.txt"]


def test_an_error_inside_the_block_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.bin"
    atomic_write(target, b"old")
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("crash in the middle of a write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_written_files_get_the_usual_permissions_not_owner_only(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "shared.json", "{}")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_stale_temporaries_are_found_removed_and_counted_and_nothing_else(tmp_path):
    from hourglass_edu.files import remove_stale_temporaries, stale_temporaries

    keep = [atomic_write(tmp_path / "checkpoint.pt", b"x"), atomic_write(tmp_path / ".lock", b"")]
    (tmp_path / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"y" * 2_000_000)
    (tmp_path / ".history.json.a1b2.tmp").write_bytes(b"z" * 1000)
    assert len(stale_temporaries(tmp_path)) == 2
    line = remove_stale_temporaries(tmp_path)
    assert line.startswith("removed 2 temporary file(s)") and "2.0 MB" in line
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert remove_stale_temporaries(tmp_path) is None


def test_links_and_folders_named_like_temporaries_are_left_alone_and_said(tmp_path):
    from hourglass_edu.files import remove_stale_temporaries, stale_temporaries

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "inside").mkdir(parents=True)
    (elsewhere / "inside" / "precious.txt").write_text("mine")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".x.tmp").symlink_to(elsewhere, target_is_directory=True)
    (run / ".y.tmp").symlink_to(elsewhere / "inside" / "precious.txt")
    (run / ".drafts.tmp").mkdir()
    assert stale_temporaries(run) == []
    line = remove_stale_temporaries(run)
    for name, kind in ((".x.tmp", "a symbolic link"), (".y.tmp", "a symbolic link"),
                       (".drafts.tmp", "a folder")):
        assert f"{run / name} alone ({kind}" in line
        assert os.path.lexists(run / name)
    assert (elsewhere / "inside" / "precious.txt").read_text() == "mine"


def test_a_folder_replacement_swaps_whole_and_a_failure_changes_nothing(tmp_path):
    from hourglass_edu.files import folder_replacement

    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="failed"), folder_replacement(target) as new:
        (new / "new.txt").write_text("new")
        raise RuntimeError("failed part way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    with folder_replacement(target) as new:
        (new / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def killed_work_folder(parent, name: str, *, old: bool = True, target: str | None = None):
    """The hidden work folder a `folder_replacement` killed between its renames leaves (its lock
    file free, as the kernel leaves it)."""
    work = parent / f".{name}.0123abcd.tmp"
    (work / "new").mkdir(parents=True)
    (work / "lock").write_bytes(b"")
    (work / "target").write_text(target if target is not None else name)
    if old:
        (work / "old").mkdir()
        (work / "old" / "weights").write_text("the old model")
    return work


def test_recovery_puts_back_only_what_a_dead_replacement_of_that_folder_moved_aside(tmp_path):
    from filelock import FileLock

    from hourglass_edu.files import recover_folder_replacement, remove_stale_temporaries

    work = killed_work_folder(tmp_path, "model")
    other = killed_work_folder(tmp_path, "model.v2")  # another folder's, a longer name
    line = recover_folder_replacement(tmp_path / "model")
    assert f"put {tmp_path / 'model'} back" in line and not work.exists() and other.exists()
    assert (tmp_path / "model" / "weights").read_text() == "the old model"

    live = killed_work_folder(tmp_path, "live")
    with FileLock(live / "lock"):  # its process is still at work
        assert recover_folder_replacement(tmp_path / "live") is None
    assert live.exists() and not (tmp_path / "live").exists()

    run = tmp_path / "run"
    run.mkdir()
    killed_work_folder(run, "escape", target="../escape")  # a crafted target name
    (killed_work_folder(run, "linked", old=False) / "old").symlink_to(tmp_path / "model")
    killed_work_folder(run, "sub")  # an export to run/sub, killed
    running = killed_work_folder(run, "running")  # an export to run/running, still at work
    with FileLock(running / "lock"):
        line = remove_stale_temporaries(run)
    assert running.exists() and str(running) not in line
    assert f"put {run / 'sub'} back" in line and (run / "sub" / "weights").is_file()
    assert not (tmp_path / "escape").exists() and not (run / "linked").exists()
    assert (tmp_path / "model" / "weights").is_file()


def test_atomic_write_files_writes_none_until_all_are_complete(tmp_path, monkeypatch):
    import hourglass_edu.files as files
    from hourglass_edu.files import atomic_write_files

    (tmp_path / "a.txt").write_text("old a")
    real_mkstemp = files.tempfile.mkstemp

    def full_at_b(*args, **kwargs):
        if kwargs["prefix"].startswith(".b.txt."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkstemp", full_at_b)
    with pytest.raises(OSError, match="No space") as caught:
        atomic_write_files(tmp_path, {"a.txt": "new a", "b.txt": "new b"})
    assert caught.value.filename == str(tmp_path / "b.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "old a"


def test_a_failed_write_names_the_file_it_was_writing(tmp_path):
    import errno

    target = tmp_path / "model.bin"
    with pytest.raises(OSError) as raised, atomic_writer(target):
        raise OSError(errno.ENOSPC, "No space left on device")  # write() names no file
    assert raised.value.filename == str(target) and raised.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_a_run_whose_picture_fails_halfway_keeps_the_picture_before(tmp_path, monkeypatch):
    """history.png is written like the run's other files: a savefig that dies after writing part
    of the PNG (a full disk, a kill) leaves the earlier picture whole."""
    from matplotlib.figure import Figure

    from hourglass_edu.cli.runs import _write_history_png
    from hourglass_edu.training import History

    history = History()
    history.append(step=1, tokens=64, elapsed=1.0, train_loss=2.0, train_bpc=2.9, val_bpc=3.0,
                   lr=1e-3)
    _write_history_png(tmp_path, history, "toy")
    before = (tmp_path / "history.png").read_bytes()
    assert before.startswith(b"\x89PNG")

    def dies_halfway(self, target, **options):
        target.write(before[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", dies_halfway)
    with pytest.raises(OSError, match="history.png"):
        _write_history_png(tmp_path, history, "toy")
    assert (tmp_path / "history.png").read_bytes() == before
    assert [path.name for path in tmp_path.iterdir()] == ["history.png"]

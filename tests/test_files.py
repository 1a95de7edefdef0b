"""Atomic writes: the target is the old file or the complete new one, and no temporary is left."""

from __future__ import annotations

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
    (tmp_path / ".README.md.a1b2.tmp").mkdir()  # an export's staging folder, killed
    assert len(stale_temporaries(tmp_path)) == 2
    line = remove_stale_temporaries(tmp_path)
    assert line.startswith("removed 2 temporary file(s)") and "2.0 MB" in line
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert remove_stale_temporaries(tmp_path) is None


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

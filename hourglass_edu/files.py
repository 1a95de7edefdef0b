"""Atomic file writes: a file is either its old self or its complete new self, never half-written.

Every file the library writes that a user would hate to lose or find truncated (checkpoints,
downloads, tokenizers, model folders, benchmark tables) goes through `atomic_writer`: the bytes go
to a temporary file in the same folder, are flushed to disk, and the temporary file is renamed
over the target (`os.replace`, atomic on POSIX and Windows). A crash or Ctrl-C at any moment
leaves the old file (or none) and no stray temporary file.

A whole folder (a model folder) is replaced by `folder_replacement`, from a hidden work folder
beside it; `recover_folder_replacement` puts the old folder back when a `kill -9` struck between
its two renames.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import reprlib
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from filelock import FileLock, Timeout

__all__ = ["atomic_write", "atomic_writer", "quoted", "recover_folder_replacement"]

# mkstemp makes owner-only files; a finished file gets the usual permissions (0o666 minus the
# umask), as open() would have given it. os.umask can only be read by setting it.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a binary handle whose contents replace `path` only when the block ends normally.

        with atomic_writer("model.pt") as handle:
            torch.save(state, handle)

    The parent folder is created if missing. On an exception the target is left untouched and the
    temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except OSError as error:
        raise _naming(error, path) from None
    except RuntimeError as error:  # torch.save wraps the OSError of a failed write
        if isinstance(error.__context__, OSError):
            raise _naming(error.__context__, path) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _naming(error: OSError, path: Path) -> OSError:
    """`error` with the target's name when it has none (a failed write() names no file)."""
    if error.filename is not None:
        return error
    return type(error)(error.errno, error.strerror, str(path))


def atomic_write(path: str | os.PathLike, content: bytes | str) -> Path:
    """Write `content` (bytes, or str as UTF-8) to `path` atomically; returns the path."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    with atomic_writer(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_files(folder: str | os.PathLike, files: dict[str, bytes | str]) -> None:
    """Write several files into `folder` (name -> content), each atomically, and none of them
    before all are complete: a failure while writing (a full disk) leaves every file as it was.
    A folder or a symbolic link where a file goes is refused before anything is written (a
    folder cannot be replaced by a file, and a link would be replaced, not written through)."""
    folder = Path(folder)
    for name in files:
        if (folder / name).is_symlink():
            raise FileExistsError(errno.EEXIST, "a symbolic link is where this file goes",
                                  str(folder / name))
        if (folder / name).is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder is where this file goes",
                                    str(folder / name))
    temporaries: dict[str, str] = {}
    name = next(iter(files), "")
    try:
        for name, content in files.items():
            descriptor, temporaries[name] = tempfile.mkstemp(dir=folder, prefix=f".{name}.",
                                                             suffix=".tmp")
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content.encode("utf-8") if isinstance(content, str) else content)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporaries[name], 0o666 & ~_UMASK)
        for name, temporary in temporaries.items():
            os.replace(temporary, folder / name)
    except OSError as error:
        raise _naming(error, folder / name) from None
    finally:
        for temporary in temporaries.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)


def stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """The temporary files (`.NAME.*.tmp`, regular files) that interrupted atomic writes left in
    `folder`: a `kill -9` mid-write leaves one, since no `finally` runs. A symbolic link or a
    folder of that name is not one (`atomic_writer` writes neither)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.glob(".*.tmp")
                  if path.is_file() and not path.is_symlink())


def remove_stale_temporaries(folder: str | os.PathLike) -> str | None:
    """Delete `stale_temporaries(folder)` and finish the folder replacements killed there
    (`recover_folder_replacement`); only call it while nothing writes there (under a folder
    lock). Returns a line saying what was done and what was left alone (a link or a folder named
    like a temporary, which this library never writes), or None when there was nothing."""
    folder = Path(folder)
    stale = stale_temporaries(folder)
    size = 0
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            size += path.stat().st_size
            path.unlink()
    lines = []
    if stale:
        names = ", ".join(path.name for path in stale[:3]) + (", ..." if len(stale) > 3 else "")
        lines.append(f"removed {len(stale)} temporary file(s) of interrupted writes from "
                     f"{folder} ({size / 1e6:.1f} MB: {names})")
    for path in sorted(folder.glob(".*.tmp")) if folder.is_dir() else []:
        if path in stale:
            continue
        target = _replacement_target(path)
        if target is None:
            kind = "a symbolic link" if path.is_symlink() else "a folder"
            lines.append(f"left {path} alone ({kind} named like a temporary file, which this "
                         "library never writes: remove it yourself if you do not need it)")
        elif (done := recover_folder_replacement(folder / target)) is not None:
            lines.append(done)
    return "; ".join(lines) or None


@contextlib.contextmanager
def holding_lock_if_any(lock_path: str | os.PathLike) -> Iterator[None]:
    """Hold the lock file `lock_path` while the block runs, when it exists (a run folder's
    `.lock`, which `train` holds while it writes there); a RuntimeError at once when another
    process holds it. No lock file is created where there is none."""
    lock_path = Path(lock_path)
    if not lock_path.is_file() or lock_path.is_symlink():  # no lock, or none of a run's
        yield
        return
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RuntimeError(f"a training run is writing into {lock_path.parent} right now (it "
                           f"holds {lock_path}): wait for it to finish, or choose another "
                           "folder") from None
    try:
        yield
    finally:
        lock.release()


# --- replacing a whole folder ---------------------------------------------------------------------
#
# POSIX has no atomic swap of two folders, so a folder is replaced in two renames, from a hidden
# work folder `.NAME.XXXXXXXX.tmp` beside it that holds:
#   lock     locked while its process lives (the kernel frees it when the process dies);
#   target   the name of the folder it replaces;
#   new/     the new folder, filled by the caller, renamed to NAME once complete;
#   old/     the old folder, moved there just before (and deleted once NAME is new).
# A `kill -9` between the renames leaves NAME missing and old/ in the work folder:
# `recover_folder_replacement(NAME)` puts it back. Work folders whose lock a live process holds
# are never touched.

_LOCK, _TARGET, _NEW, _OLD = "lock", "target", "new", "old"
# A rename that moves a folder fails with these when the folder cannot move at all (a mount
# point, another file system, a folder that may not be moved): nothing has changed then.
_CANNOT_MOVE = frozenset({errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES, errno.EROFS,
                          errno.EINVAL})
_WORK_NAME = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.tmp", re.DOTALL)
_NAME_BYTES_KEPT = 200  # of the target's name in the work folder's: a name is at most 255 bytes


def _work_prefix(target: Path) -> str:
    return os.fsdecode(os.fsencode(target.name)[:_NAME_BYTES_KEPT])


class FolderNotReplaceable(Exception):
    """The folder cannot be replaced whole (a mount point, an unwritable parent, a rename refused);
    nothing was changed. Write its files in place instead."""


@contextlib.contextmanager
def folder_replacement(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder to fill; when the block ends normally it takes `target`'s place
    whole, and the old `target` is deleted only once the new one is in place.

    On an exception nothing changes (the work folder is removed). Raises FolderNotReplaceable
    before the block runs when `target` is a mount point or its parent cannot be written, and
    after it, with `target` untouched, when the operating system refuses to move `target`.
    """
    target = Path(target)
    if target.is_dir() and os.path.ismount(target):
        raise FolderNotReplaceable(f"{target} is a mount point")
    work = _new_work_folder(target)
    lock = FileLock(work / _LOCK)
    try:
        lock.acquire(timeout=0)
    except BaseException as error:  # a full disk, or another process took it in that instant
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(error, Timeout):
            raise RuntimeError(f"another process is cleaning up beside {target}: try "
                               "again") from None
        raise
    try:
        (work / _TARGET).write_bytes(os.fsencode(target.name))
        new = work / _NEW
        new.mkdir()
        yield new
        _swap(new, target, work / _OLD)
    finally:
        lock.release()
        if os.path.lexists(target) or not (work / _OLD).exists():
            shutil.rmtree(work, ignore_errors=True)


def _new_work_folder(target: Path) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(errno.ENOTDIR, "a part of the path is a file, not a folder",
                                 str(target.parent)) from None
    for _ in range(100):
        work = target.parent / f".{_work_prefix(target)}.{secrets.token_hex(4)}.tmp"
        try:
            work.mkdir()
            return work
        except FileExistsError:
            continue
        except OSError as error:
            if error.errno in _CANNOT_MOVE | {errno.ENAMETOOLONG} and target.is_dir():
                raise FolderNotReplaceable(f"its folder {target.parent} cannot be written "
                                           f"({error.strerror})") from None
            raise OSError(error.errno, f"cannot create a folder there ({error.strerror})",
                          str(target)) from None  # named by the folder asked for
    raise FileExistsError(errno.EEXIST, "no free name for a work folder", str(target.parent))


def _swap(new: Path, target: Path, old: Path) -> None:
    if not os.path.lexists(target):
        os.replace(new, target)
        return
    try:
        os.replace(target, old)
    except OSError as error:
        if error.errno in _CANNOT_MOVE:
            raise FolderNotReplaceable(f"{target} cannot be moved ({error.strerror})") from None
        raise
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise


def _replacement_target(work: Path) -> str | None:
    """The name of the folder a work folder replaces, or None when `work` is not one."""
    match = _WORK_NAME.fullmatch(work.name)
    if match is None or work.is_symlink() or not work.is_dir():
        return None
    try:
        name = os.fsdecode((work / _TARGET).read_bytes())
    except OSError:
        return None
    fits = _work_prefix(Path(name)) == match["name"] and name not in (".", "..")
    return name if fits and "/" not in name and os.sep not in name else None


def recover_folder_replacement(target: str | os.PathLike) -> str | None:
    """Finish what killed `folder_replacement`s of `target` left beside it: a missing `target`
    is put back from the old folder, and the work folders are removed. Returns a line saying
    what was done, or None when nothing was left. Work folders of live processes stay."""
    target = Path(target)
    if not target.parent.is_dir():
        return None
    restored, removed = False, 0
    for work in sorted(target.parent.glob(f".{glob.escape(_work_prefix(target))}.*.tmp")):
        if _replacement_target(work) != target.name:
            continue
        lock = FileLock(work / _LOCK)
        try:
            lock.acquire(timeout=0)
        except Timeout:  # a replacement under way in another process
            continue
        try:
            old = work / _OLD
            if old.is_dir() and not old.is_symlink() and not os.path.lexists(target):
                os.replace(old, target)
                restored = True
        finally:
            lock.release()
        shutil.rmtree(work, ignore_errors=True)
        removed += 1
    if not removed:
        return None
    put_back = (f"put {target} back as it was before the interrupted replacement; "
                if restored else "")
    return (f"{target} was being replaced when its process was killed: {put_back}removed "
            f"{removed} hidden work folder(s) beside it")


def describe_contents(folder: str | os.PathLike, limit: int = 4) -> str:
    """What a folder holds, for a refusal: 'README.md, config.json and 3 more entries'."""
    names = sorted(path.name for path in Path(folder).iterdir())
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more entries" if len(names) > limit else "")


_QUOTE = reprlib.Repr()  # what an error quotes from a file: a few items of each container
_QUOTE.maxstring = _QUOTE.maxother = 80
_QUOTE.maxlist = _QUOTE.maxtuple = _QUOTE.maxdict = _QUOTE.maxset = 6
_QUOTE.maxlevel = 3


def quoted(value: object, limit: int = 200) -> str:
    """`repr(value)` cut to about `limit` characters, for an error line that quotes a file: a
    damaged file may hold a 140 KB string where a number belongs, and the line must stay one
    readable line. Longer text (an exception's message) is cut too, to its first line."""
    if isinstance(value, BaseException):
        lines = str(value).strip().splitlines()
        text = lines[0] if lines else type(value).__name__
    else:
        text = _QUOTE.repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"

"""Writing a file so that a crash, a full disk or a second run never loses what was there.

A write goes to ``.NAME.tmp-PID`` beside the target, is flushed to the disk (fsync), then renamed over the target,
and the folder is flushed so the rename itself survives a power cut. An existing target is kept as
``NAME.bak`` (one generation: the file it replaced), so re-running a command never silently destroys a result.
Temporary files of processes that died (SIGKILL leaves them) are removed before the next write to that folder.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError


def temp_path(path: Path) -> Path:
    """This process's temporary name for ``path`` (hidden, in the same folder so the rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def backup_path(path: Path) -> Path:
    """Where the file an output replaces is kept (not ``*.safetensors``, so no library lists it as a LoRA)."""
    return path.with_name(path.name + ".bak")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete ``.NAME.tmp-PID`` files beside ``path`` whose process is gone; return them."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's) contents to the disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # some systems cannot open a folder; the rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass  # a file system without fsync for folders
    finally:
        os.close(fd)


def keep_backup(path: Path) -> Path | None:
    """Keep the current ``path`` as ``NAME.bak`` (replacing an older backup); None when there was no file.

    A hard link, so the target stays in place until the new file is renamed over it."""
    if not path.is_file():
        return None
    backup = backup_path(path)
    backup.unlink(missing_ok=True)
    try:
        os.link(path, backup)
    except OSError:
        shutil.copy2(path, backup)
    return backup


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                fsync_path(child)
    fsync_path(path)


@contextmanager
def atomic_write(path: str | os.PathLike, *, backup: bool = False) -> Iterator[Path]:
    """Write ``path`` (a file, or a folder) all at once: the body writes the yielded temporary path beside it.

    On success the temporary file (or every file of the temporary folder) is flushed, the current ``path`` is kept
    as ``NAME.bak`` when ``backup`` is set, the temporary path is renamed over ``path`` and the folder is flushed.
    On any failure the temporary path is removed and ``path`` is left as it was. Temporary files of dead
    processes beside ``path`` are removed first.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = temp_path(target)
    _remove(tmp)
    try:
        yield tmp
        _fsync_tree(tmp)
        if backup:
            keep_backup(target)
        if tmp.is_dir() and target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)  # a folder cannot be renamed over a non-empty folder
        os.replace(tmp, target)
        fsync_path(target.parent)
    finally:
        _remove(tmp)


def refuse_output_that_is_an_input(output: str | os.PathLike, inputs: list[str | os.PathLike], flag: str = "--out") -> None:
    """One error line when a command would write over one of the files it reads."""
    out = Path(output)
    for source in inputs:
        src = Path(source)
        same = out.exists() and src.exists() and os.path.samefile(out, src)
        if same or out.resolve() == src.resolve():
            raise UserError(f"{flag} {out} is also an input; write to a new file (the input would be replaced "
                            "while it is read)")


__all__ = ["atomic_write", "backup_path", "fsync_path", "keep_backup", "refuse_output_that_is_an_input", "remove_stale_temps",
           "temp_path"]

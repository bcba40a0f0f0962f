"""Files written through a temporary name get the same permissions as any other new file."""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it (os.umask would race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_like_new_file(path: str | os.PathLike) -> None:
    """chmod ``path`` to what ``open(path, "w")`` would have given it (0666 less the umask).

    Temporary files are created private (0600); after the rename they would stay unreadable
    to other users, web servers and sync tools.
    """
    os.chmod(path, 0o666 & ~current_umask())


def make_tree_like_new(folder: str | os.PathLike) -> None:
    """``make_like_new_file`` for every file under ``folder`` (a pipeline written by save_pretrained)."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            make_like_new_file(path)

"""Output paths checked before any model loads, so a wrong --out costs a second, not a model load."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError


def _folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be written to (created first if missing), or None."""
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot create {folder} ({error.strerror or error})"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable"
    return None


def writable_folder(path: str, flag: str) -> Path:
    """``path`` as a folder that exists (created if needed) and can be written to."""
    folder = Path(path).expanduser()
    problem = _folder_problem(folder)
    if problem:
        raise UserError(f"{flag} {path}: {problem}; choose a folder you can write to")
    return folder


def writable_file(path: str, flag: str) -> Path:
    """``path`` as a file whose folder exists (created if needed) and can be written to."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name, e.g. {Path(path) / 'my_style.safetensors'}")
    problem = _folder_problem(target.parent)
    if problem:
        raise UserError(f"{flag} {path}: {problem}; choose a folder you can write to")
    return target

"""The checks of a LoRA file's path that need no file parsing (and no torch): it exists, and it is safetensors."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError


def checked_adapter_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or one error line: not found, or not a .safetensors file (refused before a byte is read)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"LoRA file not found: {path}; check the path")
    if path.suffix.lower() != ".safetensors":
        raise UserError(
            f"LoRA file {path} is not a .safetensors file; only safetensors adapters are loaded "
            "(convert pickle files with a trusted tool first)"
        )
    return path

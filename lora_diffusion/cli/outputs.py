"""The one overwrite policy of every command that writes a file (README, "Outputs are never lost").

An output that is one of the command's inputs is refused; an existing output is replaced atomically and the file it
replaced is kept as ``NAME.bak`` beside it (``safe_write``), and the command says so.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..safe_write import backup_path, refuse_output_that_is_an_input


def check_output(output: str | os.PathLike, inputs: list[str | os.PathLike], flag: str = "--out") -> bool:
    """Refuse an output that is an input; return whether a file is already there (it will be kept as .bak)."""
    refuse_output_that_is_an_input(output, inputs, flag)
    return Path(output).is_file()


def replaced_note(path: str | os.PathLike, existed: bool) -> str:
    """The words that tell the user where the replaced file went, or nothing."""
    return f"; the file it replaced is kept as {backup_path(Path(path)).name}" if existed else ""

"""Find training examples: image files and their captions, as kohya, A1111 and diffusers lay them out."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .images import IMAGE_EXTENSIONS, header_problem
from .masks import MASK_FOLDER

_REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class Example:
    """One image and its caption; ``repeats`` from kohya's ``N_name`` folders; ``subset``: its place in a dataset
    config's list (``data/dataset_config.py``; 0 without one)."""

    path: str
    caption: str
    repeats: int = 1
    subset: int = 0


@dataclass
class Scan:
    examples: list[Example]
    skipped: list[tuple[str, str]]  # (file, reason)


def _read_caption(path: Path) -> tuple[str | None, str | None]:
    try:
        raw = path.read_bytes()
    except OSError as error:
        return None, f"caption unreadable ({error.strerror})"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # keep the caption rather than dropping the image; replace the bad bytes
        text = raw.decode("utf-8", errors="replace")
    return " ".join(text.split()), None


def _metadata(folder: Path) -> dict[str, str] | None:
    """file_name -> caption from a diffusers imagefolder ``metadata.jsonl`` / ``metadata.csv``."""
    jsonl, table = folder / "metadata.jsonl", folder / "metadata.csv"
    rows: list[dict] = []
    if jsonl.is_file():
        for number, line in enumerate(jsonl.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UserError(f"{jsonl} line {number} is not valid JSON; fix or remove that line") from None
    elif table.is_file():
        with table.open(encoding="utf-8", errors="replace", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        return None
    out = {}
    for row in rows:
        name = row.get("file_name")
        text = row.get("text", row.get("caption", row.get("prompt", "")))
        if name:
            out[str(name)] = " ".join(str(text or "").split())
    return out


def scan_folder(root: str | Path, caption: str = "", trigger_word: str = "", caption_extension: str = ".txt") -> Scan:
    """Every image under ``root`` (nested folders too) with its caption.

    Caption sources, first found wins: ``metadata.jsonl``/``.csv`` in the image's
    folder or an ancestor, a same-name caption file, then ``caption``. The trigger
    word is put in front. Images with no caption from any source, and files that are not usable images (checked
    from their headers, before any model loads), are skipped.
    """
    given, root = str(root), Path(root)
    if not root.is_dir():
        raise UserError(f"data folder not found: {given}; pass --data with a folder of images")
    examples: list[Example] = []
    skipped: list[tuple[str, str]] = []
    metadata_cache: dict[Path, dict[str, str] | None] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        parts = path.relative_to(root).parts
        # masks/ folders hold loss masks (data/masks.py), not training images
        if path.suffix.lower() not in IMAGE_EXTENSIONS or any(p.startswith(".") for p in parts) or MASK_FOLDER in parts[:-1]:
            continue
        problem = header_problem(path)  # before captions: a broken file is named as that, not as "no caption"
        if problem:
            skipped.append((str(path), problem))
            continue
        text = None
        for folder in [path.parent, *path.parent.parents]:
            if folder not in metadata_cache:
                metadata_cache[folder] = _metadata(folder)
            table = metadata_cache[folder]
            if table is not None:
                text = table.get(path.relative_to(folder).as_posix())
                if text is not None:
                    break
            if folder == root:
                break
        if text is None:
            caption_file = path.with_suffix(caption_extension)
            if caption_file.is_file():
                text, problem = _read_caption(caption_file)
                if problem:
                    skipped.append((str(path), problem))
                    continue
        if not text:
            text = caption
        if not text and not trigger_word:
            skipped.append((str(path), f"no caption (add {path.with_suffix(caption_extension).name}, or pass --caption or --trigger-word)"))
            continue
        if trigger_word:
            text = f"{trigger_word}, {text}" if text else trigger_word
        repeats = 1
        for part in path.relative_to(root).parent.parts:
            match = _REPEAT_FOLDER.match(part)
            if match:
                repeats = max(1, int(match.group(1)))
        examples.append(Example(str(path), text, repeats))
    return Scan(examples, skipped)

"""Captioning a folder: which images need a caption, how each caption is finished (trigger word, prefix/suffix,
tag blacklist and replacements), written beside its image one at a time — so a stopped run resumes where it was."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UserError
from .images import IMAGE_EXTENSIONS, BadImage, open_rgb
from .masks import MASK_FOLDER


@dataclass
class CaptionOptions:
    """How captions are finished and where they go (the flags of ``lora-diffusion caption``)."""

    extension: str = ".txt"
    trigger_word: str = ""
    prefix: str = ""
    suffix: str = ""
    blacklist: list[str] = field(default_factory=list)  # tags/phrases dropped (comma-separated parts)
    replace: list[tuple[str, str]] = field(default_factory=list)  # (old, new) whole-word replacements
    overwrite: bool = False


def images_to_caption(folder: str | Path, options: CaptionOptions) -> tuple[list[Path], list[Path]]:
    """(images that need a caption, images that have one and are kept) under ``folder`` (nested folders too; not
    ``masks/`` or hidden ones)."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"caption: folder not found: {folder}; give a folder of images")
    todo, kept = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS):
        parts = path.relative_to(root).parts
        if any(p.startswith(".") for p in parts) or MASK_FOLDER in parts[:-1]:
            continue
        caption = path.with_suffix(options.extension)
        if caption.is_file() and caption.read_text(encoding="utf-8", errors="replace").strip() and not options.overwrite:
            kept.append(path)
        else:
            todo.append(path)
    return todo, kept


def finish_caption(text: str, options: CaptionOptions) -> str:
    """The model's text with the blacklist, replacements, prefix, suffix and trigger word applied."""
    parts = [p.strip() for p in text.split(",")]
    banned = {b.strip().lower() for b in options.blacklist if b.strip()}
    text = ", ".join(p for p in parts if p and p.lower() not in banned)
    for old, new in options.replace:
        text = re.sub(rf"(?<!\w){re.escape(old)}(?!\w)", new, text)
    text = " ".join(f"{options.prefix} {text} {options.suffix}".split())
    if options.trigger_word and not text.startswith(options.trigger_word):
        text = f"{options.trigger_word}, {text}" if text else options.trigger_word
    return text


def caption_folder(todo: list[Path], caption: Callable[[list], list[str]], options: CaptionOptions,
                   batch_size: int, progress: bool = True) -> tuple[int, list[tuple[str, str]]]:
    """Caption ``todo`` in batches with ``caption`` (PIL images → texts), each file written as soon as its batch
    is done. Returns (captions written, skipped (file, why))."""
    from tqdm.auto import tqdm

    from ..safe_write import atomic_write

    written, skipped = 0, []
    bar = tqdm(total=len(todo), desc="caption", unit="image", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(todo), batch_size):
            batch, images = [], []
            for path in todo[start:start + batch_size]:
                try:
                    images.append(open_rgb(path))
                    batch.append(path)
                except BadImage as error:
                    skipped.append((str(path), str(error)))
                    print(f"warning: skipping {path}: {error}", file=sys.stderr)
                    bar.update(1)
            if not batch:
                continue
            for path, text in zip(batch, caption(images)):
                with atomic_write(path.with_suffix(options.extension)) as tmp:
                    Path(tmp).write_text(finish_caption(text, options) + "\n", encoding="utf-8")
                written += 1
                bar.update(1)
    finally:
        bar.close()
    return written, skipped


def parse_replacements(items: list[str]) -> list[tuple[str, str]]:
    """``OLD=NEW`` pairs of ``--replace``; one line for a malformed one."""
    pairs = []
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old.strip():
            raise UserError(f"--replace {item!r}: give OLD=NEW (e.g. --replace 'a man=sks man')")
        pairs.append((old.strip(), new.strip()))
    return pairs

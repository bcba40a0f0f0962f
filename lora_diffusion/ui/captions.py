"""The Train tab's captions: caption a folder (uploads are unpacked into one first), show every image's caption in an
editable grid, apply a find/replace or a trigger word to all, and save the grid beside the images."""

from __future__ import annotations

import re
from pathlib import Path

from ..data.captioning import CaptionOptions, caption_folder, images_to_caption
from ..errors import UserError
from ..safe_write import atomic_write

MAX_IMAGES = 2000  # one request's grid (the uploads' limit)
MAX_CAPTION = 4000  # characters a saved caption may have


def caption_rows(folder: Path) -> list[list[str]]:
    """[image file relative to ``folder``, its caption] for every image, sorted."""
    todo, kept = images_to_caption(folder, CaptionOptions())
    images = sorted(todo + kept)
    if len(images) > MAX_IMAGES:
        raise UserError(f"{len(images)} images in the folder; the caption grid shows at most {MAX_IMAGES}")
    rows = []
    for image in images:
        text = image.with_suffix(".txt")
        rows.append([image.relative_to(folder).as_posix(),
                     text.read_text(encoding="utf-8", errors="replace").strip() if text.is_file() else ""])
    return rows


def caption_missing(folder: Path, captioner, detail: str) -> int:
    """Caption the images of ``folder`` that have none; returns how many were written."""
    todo, _ = images_to_caption(folder, CaptionOptions())
    if len(todo) > MAX_IMAGES:
        raise UserError(f"{len(todo)} images to caption; at most {MAX_IMAGES} per request")
    written, _ = caption_folder(todo, lambda images: captioner.caption(images, detail), CaptionOptions(),
                                batch_size=8 if captioner.device.type == "cuda" else 2, progress=False)
    return written


def bulk_edit(rows: list[list[str]], find: str, replace: str, trigger: str) -> list[list[str]]:
    """Every caption with ``find`` replaced by ``replace`` (whole words) and ``trigger`` put in front where missing."""
    out = []
    for name, caption in rows:
        caption = str(caption or "")
        if find.strip():
            caption = re.sub(rf"(?<!\w){re.escape(find.strip())}(?!\w)", replace.strip(), caption)
        trigger = trigger.strip()
        if trigger and not caption.startswith(trigger):
            caption = f"{trigger}, {caption}" if caption else trigger
        out.append([name, " ".join(caption.split())])
    return out


def save_rows(folder: Path, rows: list[list[str]]) -> int:
    """Write each row's caption beside its image; a row naming no image of ``folder`` is refused (the grid comes
    from a page, and a page can send anything)."""
    root = folder.resolve()
    images = {image.relative_to(folder).as_posix() for image in sum(images_to_caption(folder, CaptionOptions()), [])}
    if len(rows) > MAX_IMAGES:
        raise UserError(f"{len(rows)} captions sent; at most {MAX_IMAGES}")
    saved = 0
    for name, caption in rows:
        name, caption = str(name), str(caption or "")
        if name not in images or root not in (root / name).resolve().parents:
            raise UserError(f"caption grid: {name[:80]!r} is not an image of this folder; reload the grid")
        if len(caption) > MAX_CAPTION:
            raise UserError(f"caption of {name} is {len(caption)} characters; at most {MAX_CAPTION}")
        with atomic_write((folder / name).with_suffix(".txt")) as tmp:
            Path(tmp).write_text(" ".join(caption.split()) + "\n", encoding="utf-8")
        saved += 1
    return saved

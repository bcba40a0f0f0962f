"""Hub datasets (needs network): ``datasets.load_dataset`` materialised as an image folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import UserError
from .folder import Example

IMAGE_COLUMNS = ("image", "img", "pixel_values")
TEXT_COLUMNS = ("text", "caption", "prompt", "sentence")


def looks_like_hub_id(data: str) -> bool:
    """``owner/name`` that is not a local path (``my_imgs/`` is a folder that is missing, not a hub id)."""
    owner, _, name = data.partition("/")
    return bool(owner and name) and "/" not in name and not Path(data).exists() and not data.startswith((".", "~"))


def load_hub_examples(dataset_id: str, cache_dir: Path, split: str = "train") -> list[Example]:
    """Download ``dataset_id`` with ``datasets`` and write its images as PNGs under ``cache_dir``."""
    try:
        from datasets import load_dataset

        dataset = load_dataset(dataset_id, split=split)
    except Exception as error:  # noqa: BLE001 - network, auth and format errors all end here
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise UserError(f"data {dataset_id}: could not load the hub dataset ({first}); with no network, pass a local folder") from None
    image_col = next((c for c in IMAGE_COLUMNS if c in dataset.column_names), None)
    text_col = next((c for c in TEXT_COLUMNS if c in dataset.column_names), None)
    if image_col is None:
        raise UserError(f"data {dataset_id}: no image column (looked for {', '.join(IMAGE_COLUMNS)})")
    folder = cache_dir / hashlib.sha1(dataset_id.encode()).hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for i, row in enumerate(dataset):
        path = folder / f"{i:06d}.png"
        if not path.exists():
            row[image_col].convert("RGB").save(path)
        examples.append(Example(str(path), str(row.get(text_col, "") or "") if text_col else ""))
    return examples

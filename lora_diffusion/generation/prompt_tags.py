"""A1111's ``<lora:NAME:WEIGHT>`` prompt tags: LoRAs chosen by name from a library folder.

``<lora:NAME:W>`` sets both weights; ``<lora:NAME:W_UNET:W_TEXT>`` sets the UNet and text-encoder
weights apart; ``<lora:NAME>`` means weight 1. The tags are taken out of the text the encoder sees.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

TAG = re.compile(r"<lora:([^:<>]+)((?::[^:<>]*){0,2})>")


@dataclass(frozen=True)
class LoraTag:
    name: str
    weight: float = 1.0
    text_weight: float | None = None


def split_lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """(the prompt without its tags, the tags in order); a malformed weight is one error line."""
    tags = []
    for match in TAG.finditer(prompt):
        name, numbers = match.group(1).strip(), [n for n in match.group(2).split(":")[1:]]
        try:
            values = [float(n) for n in numbers]
        except ValueError:
            raise UserError(f"prompt tag {match.group(0)}: weights must be numbers, e.g. <lora:{name}:0.8>") from None
        if not all(math.isfinite(v) for v in values):
            raise UserError(f"prompt tag {match.group(0)}: weights must be finite numbers (not nan or inf), "
                            f"e.g. <lora:{name}:0.8>")
        tags.append(LoraTag(name, values[0] if values else 1.0, values[1] if len(values) > 1 else None))
    text = TAG.sub("", prompt)
    return re.sub(r"\s{2,}", " ", text).strip().strip(",").strip(), tags


def resolve_tag(tag: LoraTag, lora_dir: str | Path) -> Path:
    """The library file a tag names, or one error line with the closest names in the folder."""
    folder = Path(lora_dir)
    path = folder / f"{tag.name}.safetensors"
    if path.is_file() and path.resolve().parent == folder.resolve():
        return path
    names = sorted(p.stem for p in folder.glob("*.safetensors")) if folder.is_dir() else []
    close = difflib.get_close_matches(tag.name, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else (
        f"the folder has: {', '.join(names[:8])}" if names else "the folder has no .safetensors LoRAs")
    raise UserError(f"<lora:{tag.name}>: no {tag.name}.safetensors in the LoRA folder {folder} ({hint}); "
                    "set --lora-dir or fix the name")

"""The LoRA library: ``.safetensors`` files in one folder, addressed by bare names only.

Every name that reaches the file system goes through ``LoraLibrary.path``: no separators, no
parent references, no hidden files, only ``.safetensors``; so a request like ``../../x`` is refused
before any file is touched. Writes go through a temporary file and a rename.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..adapters.file import read_adapter
from ..errors import UserError
from ..safe_write import atomic_write

MAX_LORA_BYTES = 2 * 1024**3  # the largest LoRA the library accepts (SDXL rank-128 is ~1 GB)
# preview images beside a LoRA, as A1111 names them (the first found is shown)
PREVIEW_SUFFIXES = (".preview.png", ".png")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _\-.()+]{0,119}$")


@dataclass
class LoraEntry:
    """One file of the library and what it holds (as text, never HTML)."""

    name: str
    path: Path
    size_bytes: int
    info: dict | None  # inspect's facts, or None when the file cannot be read
    error: str | None = None


class LoraLibrary:
    """The files of one LoRA folder; the folder is created if missing."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser().resolve()
        self.folder.mkdir(parents=True, exist_ok=True)

    def check_name(self, name: str) -> str:
        """``name`` with ``.safetensors`` added, or a UserError if it could leave the folder."""
        name = (name or "").strip()
        if name.lower().endswith(".safetensors"):
            name = name[: -len(".safetensors")]
        if name.lower().endswith(".safetensors"):
            # NAME.safetensors.safetensors would list as NAME.safetensors, which resolves to a file that is not there
            raise UserError(f"LoRA name {name + '.safetensors'!r} ends in .safetensors twice; give the name once, "
                            f"e.g. {name[: -len('.safetensors')] or 'style'!r}")
        if not _NAME.match(name) or ".." in name:
            raise UserError(
                f"LoRA name {name!r} is not allowed; use letters, digits, spaces and _ - . ( ) + "
                "(no folders, at most 120 characters)"
            )
        return name + ".safetensors"

    def path(self, name: str, must_exist: bool = True) -> Path:
        """The file for a library name, guaranteed inside the folder."""
        path = (self.folder / self.check_name(name)).resolve()
        if path.parent != self.folder:
            raise UserError(f"LoRA name {name!r} points outside the LoRA folder; use a plain file name")
        if must_exist and not path.is_file():
            raise UserError(f"no LoRA named {name!r} in {self.folder}; refresh the list")
        return path

    def names(self) -> list[str]:
        """The library's LoRAs; files whose names no request could address (made by hand) are left out."""
        return sorted(p.stem for p in self.folder.glob("*.safetensors")
                      if p.is_file() and _NAME.match(p.stem) and not p.stem.lower().endswith(".safetensors"))

    def entry(self, name: str) -> LoraEntry:
        from ..adapters.summary import describe

        path = self.path(name)
        try:
            info = describe(read_adapter(path), path)
            return LoraEntry(path.stem, path, path.stat().st_size, info)
        except UserError as error:
            return LoraEntry(path.stem, path, path.stat().st_size, None, str(error))

    def add(self, source: str | os.PathLike, name: str | None = None) -> str:
        """Copy an uploaded file in (validated as a LoRA first); returns its library name."""
        source = Path(source)
        if source.suffix.lower() != ".safetensors":
            raise UserError(f"{source.name}: only .safetensors LoRA files are accepted")
        if source.stat().st_size > MAX_LORA_BYTES:
            raise UserError(f"{source.name}: larger than {MAX_LORA_BYTES // 1024**3} GB; that is not a LoRA")
        read_adapter(source)  # refuses anything that is not a readable LoRA, before it is kept
        target = self.path(name or source.stem, must_exist=False)
        if target.exists():
            raise UserError(f"a LoRA named {target.stem!r} already exists; rename or delete it first")
        with atomic_write(target) as tmp:
            shutil.copyfile(source, tmp)
        return target.stem

    def rename(self, old: str, new: str) -> str:
        source, target = self.path(old), self.path(new, must_exist=False)
        if target.exists():
            raise UserError(f"a LoRA named {target.stem!r} already exists; choose another name")
        os.replace(source, target)
        for suffix in PREVIEW_SUFFIXES:  # the preview travels with its LoRA
            side = source.with_name(source.stem + suffix)
            if side.is_file():
                os.replace(side, target.with_name(target.stem + suffix))
        return target.stem

    def delete(self, name: str) -> None:
        path = self.path(name)
        path.unlink()
        for suffix in PREVIEW_SUFFIXES:
            path.with_name(path.stem + suffix).unlink(missing_ok=True)

    def preview(self, name: str) -> Path | None:
        """The LoRA's preview image (``NAME.preview.png`` or ``NAME.png``), if there is one."""
        path = self.path(name)
        for suffix in PREVIEW_SUFFIXES:
            side = path.with_name(path.stem + suffix)
            if side.is_file():
                return side
        return None

    def set_preview(self, name: str, image: str | os.PathLike) -> Path:
        """Copy ``image`` in as the LoRA's ``NAME.preview.png``."""
        target = self.path(name).with_name(f"{self.path(name).stem}.preview.png")
        shutil.copyfile(image, target)
        return target


def trigger_words(info: dict, limit: int = 8) -> list[str]:
    """The words a LoRA wants in the prompt: ours (``lora_diffusion.trigger_words``), else kohya's most
    frequent training tags (``ss_tag_frequency``), most frequent first."""
    import json

    meta = info.get("metadata", {})
    try:
        ours = json.loads(meta.get("lora_diffusion.trigger_words") or "[]")
    except json.JSONDecodeError:
        ours = []
    words = [str(w) for w in ours if str(w).strip()] if isinstance(ours, list) else []
    if not words and "lora_diffusion.trigger_words" not in meta:  # a file of ours says so itself, even when empty
        try:
            frequency = json.loads(meta.get("ss_tag_frequency") or "{}")
        except json.JSONDecodeError:
            frequency = {}
        counts: dict[str, int] = {}
        for tags in frequency.values() if isinstance(frequency, dict) else []:
            for tag, count in (tags.items() if isinstance(tags, dict) else []):
                number = _count(count)
                if number is not None:  # a file from elsewhere may hold anything here: skip what is not a count
                    counts[str(tag).strip()] = counts.get(str(tag).strip(), 0) + number
        words = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if t]
    return words[:limit]


def _count(value: object) -> int | None:
    """A tag count as an int, or None when it is not a finite number."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) else None


def loss_curve(info: dict) -> list[tuple[int, float]]:
    """The training-loss curve kept in the adapter's metadata (``lora_diffusion.loss_curve``)."""
    import json

    try:
        points = json.loads(info.get("metadata", {}).get("lora_diffusion.loss_curve") or "[]")
        return [(int(s), float(v)) for s, v in points]
    except (json.JSONDecodeError, TypeError, ValueError):
        return []

"""A1111's "parameters" PNG text chunk: written with every image, read back by other tools."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..errors import UserError
from .defaults import DEFAULT_CFG, DEFAULT_SAMPLER, DEFAULT_STEPS
from .limits import MAX_SEED, MAX_SIDE, MAX_STEPS


@dataclass
class GenerationParams:
    prompt: str
    negative_prompt: str = ""
    steps: int = DEFAULT_STEPS
    sampler: str = DEFAULT_SAMPLER
    cfg_scale: float = DEFAULT_CFG
    seed: int = 0
    width: int = 512
    height: int = 512
    model: str = "builtin"
    loras: list[tuple[str, float]] = field(default_factory=list)  # (name, weight)

    def to_text(self) -> str:
        """A1111 layout: prompt (with <lora:name:w> tags), 'Negative prompt:', then 'Key: value, ...'."""
        tags = "".join(f" <lora:{name}:{_num(w)}>" for name, w in self.loras)
        lines = [self.prompt + tags]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        lines.append(
            f"Steps: {self.steps}, Sampler: {self.sampler}, CFG scale: {_num(self.cfg_scale)}, Seed: {self.seed}, "
            f"Size: {self.width}x{self.height}, Model: {_quote(self.model)}"
        )
        return "\n".join(lines)

    @classmethod
    def from_text(cls, text: str) -> "GenerationParams":
        """Parse A1111's layout. Linear in the text's length: a PNG is a stranger's input, and a backtracking
        pattern on a 1 MB text chunk would hold the interpreter (and every other request) for hours."""
        lines = text.split("\n")
        settings_line = lines[-1]
        negative = ""
        body = lines[:-1]
        neg_at = next((i for i, line in enumerate(body) if line.startswith("Negative prompt: ")), None)
        if neg_at is not None:
            negative = "\n".join(body[neg_at:])[len("Negative prompt: "):]
            body = body[:neg_at]
        prompt = "\n".join(body)
        loras = [(m.group(1), float(m.group(2))) for m in _LORA_WITH_WEIGHT.finditer(prompt)]
        prompt = _strip_lora_tags(prompt)
        values = settings_values(settings_line)
        size = values.get("Size", "512x512").split("x")
        if len(size) != 2:
            raise UserError(f"PNG parameters: Size {values['Size']!r} is not WIDTHxHEIGHT")
        return cls(
            prompt=prompt, negative_prompt=negative, steps=_field(values, "Steps", DEFAULT_STEPS, int, MAX_STEPS),
            sampler=values.get("Sampler", ""), cfg_scale=_field(values, "CFG scale", DEFAULT_CFG, float, 1e4),
            seed=_field(values, "Seed", 0, int, MAX_SEED), width=_field({"Size": size[0]}, "Size", 512, int, MAX_SIDE),
            height=_field({"Size": size[1]}, "Size", 512, int, MAX_SIDE), model=_unquote(values.get("Model", "")),
            loras=loras,
        )


def _field(values: dict[str, str], key: str, default, kind, limit: float):
    """One number of the settings line within ``-limit..limit``, or one error line naming the field."""
    if key not in values:
        return default
    try:
        number = kind(values[key].strip())
    except ValueError:
        raise UserError(f"PNG parameters: {key} {values[key][:40]!r} is not a number") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise UserError(f"PNG parameters: {key} {values[key][:40]!r} is not a finite number")
    if abs(number) > limit:
        raise UserError(f"PNG parameters: {key} {values[key][:40]!r} is out of range (at most {int(limit) if kind is int else limit})")
    return number


# '<' is excluded inside a tag so that each match attempt stops at the next tag's start: linear on any text
_LORA_WITH_WEIGHT = re.compile(r"<lora:([^:<>]+):([-0-9.eE]+)>")
_LORA_TAG = re.compile(r"<lora:[^<>]*>")
_KEY = re.compile(r"\w[\w ]*")


def _strip_lora_tags(prompt: str) -> str:
    """The prompt without its <lora:…> tags and the whitespace just before each (as A1111 writes them)."""
    parts = _LORA_TAG.split(prompt)
    return "".join(part.rstrip() if i < len(parts) - 1 else part for i, part in enumerate(parts))


def settings_values(line: str) -> dict[str, str]:
    """A1111's settings line, ``Key: value, Key: "quoted, value", …``, as a dict, in one left-to-right pass.

    Text before the first ``Key: `` that is not a key (a stray word) is skipped up to the next ``, ``."""
    values: dict[str, str] = {}
    pos, n = 0, len(line)
    while pos < n:
        colon = line.find(": ", pos)
        if colon < 0:
            break
        key = line[pos:colon]
        value_at = colon + 2
        if value_at < n and line[value_at] == '"':
            end = _closing_quote(line, value_at + 1)
            value, pos = line[value_at:end + 1], end + 1
            comma = line.find(", ", pos)
            pos = n if comma < 0 else comma + 2
        else:
            comma = line.find(", ", value_at)
            end = n if comma < 0 else comma
            value, pos = line[value_at:end], (n if comma < 0 else comma + 2)
        if _KEY.fullmatch(key):
            values[key] = value
    return values


def _closing_quote(line: str, start: int) -> int:
    """Index of the quote that closes a value opened just before ``start`` (backslash escapes), or the end."""
    i = start
    while i < len(line):
        c = line[i]
        if c == "\\":
            i += 2
        elif c == '"':
            return i
        else:
            i += 1
    return len(line) - 1


def _num(value: float) -> str:
    return f"{value:g}"


def _quote(text: str) -> str:
    # A1111 quotes a value the way json does, so inner quotes and backslashes survive the round trip
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"\n') else text


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            return text[1:-1]
        return value if isinstance(value, str) else text[1:-1]
    return text


def save_png(image: Image.Image, path: Path, params: GenerationParams) -> Path:
    """Write the PNG with its parameters chunk, atomically."""
    from ..safe_write import atomic_write

    info = PngInfo()
    info.add_text("parameters", params.to_text())
    with atomic_write(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def read_png_params(path: Path) -> GenerationParams:
    """The parameters chunk of a PNG, read from the chunks before the pixel data: no pixel is decoded (a
    13000² image costs what its header costs), and PIL bounds each text chunk (``MAX_TEXT_CHUNK``). A PNG with no
    such chunk raises KeyError."""
    with Image.open(path) as image:
        text = image.info["parameters"]  # `image.text` would decode every pixel to reach chunks after them
    if not isinstance(text, str):
        raise KeyError("parameters")
    return GenerationParams.from_text(text)

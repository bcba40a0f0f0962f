"""A1111's "parameters" PNG text chunk: written with every image, read back by other tools."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo


@dataclass
class GenerationParams:
    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    sampler: str = "DPM++ 2M"
    cfg_scale: float = 5.0
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
        lines = text.split("\n")
        settings_line = lines[-1]
        negative = ""
        body = lines[:-1]
        neg_at = next((i for i, line in enumerate(body) if line.startswith("Negative prompt: ")), None)
        if neg_at is not None:
            negative = "\n".join(body[neg_at:])[len("Negative prompt: "):]
            body = body[:neg_at]
        prompt = "\n".join(body)
        loras = [(m.group(1), float(m.group(2))) for m in re.finditer(r"<lora:([^:>]+):([-0-9.eE]+)>", prompt)]
        prompt = re.sub(r"\s*<lora:[^>]+>", "", prompt)
        values = dict(re.findall(r'(\w[\w ]*): ("(?:[^"\\]|\\.)*"|[^,]*)(?:, |$)', settings_line))
        width, height = (int(v) for v in values.get("Size", "512x512").split("x"))
        return cls(
            prompt=prompt, negative_prompt=negative, steps=int(values.get("Steps", 20)),
            sampler=values.get("Sampler", ""), cfg_scale=float(values.get("CFG scale", 5.0)),
            seed=int(values.get("Seed", 0)), width=width, height=height,
            model=_unquote(values.get("Model", "")), loras=loras,
        )


def _num(value: float) -> str:
    return f"{value:g}"


def _quote(text: str) -> str:
    return f'"{text}"' if any(c in text for c in ',:"\n') else text


def _unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def save_png(image: Image.Image, path: Path, params: GenerationParams) -> Path:
    """Write the PNG with its parameters chunk, atomically."""
    import os

    info = PngInfo()
    info.add_text("parameters", params.to_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)
    return path


def read_png_params(path: Path) -> GenerationParams:
    with Image.open(path) as image:
        return GenerationParams.from_text(image.text["parameters"])

"""A1111's X/Y plot for LoRA weights: one labelled PNG, rows = one LoRA's weights, columns = seeds,
prompts or a second LoRA's weights. Every cell uses its column's seed, so only the weight changes
down a column; the engine re-weights in place, so no file is read twice."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from ..errors import UserError
from ..safe_write import atomic_write
from .engine import MAX_SEED, GenerationEngine, LoraChoice
from .params import GenerationParams

LABEL_PX = 24  # height of the column-label band; row labels get a band of 4x this width


@dataclass(frozen=True)
class Column:
    label: str
    prompt: str
    seed: int
    extra: tuple[LoraChoice, ...] = ()


def parse_numbers(text: str, what: str, kind=float) -> list:
    """Comma-separated numbers (``0,0.5,1``), or one error line naming ``what`` (a flag or a UI field); with
    ``kind=int`` they are seeds, each in ``0..MAX_SEED``."""
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} {text!r}: write comma-separated numbers, e.g. {what} 0,0.5,1") from None
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"{what} {text!r}: numbers must be finite (not nan or inf)")
    if kind is int and not all(0 <= v <= MAX_SEED for v in values):
        raise UserError(f"{what} {text!r}: seeds are whole numbers from 0 to {MAX_SEED}")
    if not values:
        raise UserError(f"{what} is empty; write comma-separated numbers, e.g. {what} 0,0.5,1")
    return values


def grid_columns(prompt: str, seeds: list[int], *, prompts: list[str] | None = None, lora2: str | None = None,
                 weights2: list[float] | None = None) -> list[Column]:
    """The columns: one per seed; or one per prompt (``prompt`` first) at the first seed; or one per
    weight of a second LoRA at the first seed."""
    if prompts is not None and lora2:
        raise UserError("prompts and a second LoRA both make columns; pick one")
    if prompts is not None:
        return [Column(p[:24], p, seeds[0]) for p in [prompt, *prompts]]
    if lora2:
        name = Path(lora2).stem
        return [Column(f"{name} {w:g}", prompt, seeds[0], (LoraChoice(lora2, w),)) for w in weights2 or []]
    return [Column(f"seed {s}", prompt, s) for s in seeds]


def weight_grid(engine: GenerationEngine, *, base: str, lora: LoraChoice, weights: list[float], columns: list[Column],
                negative_prompt: str = "", steps: int = 20, guidance: float = 5.0, width: int | None = None,
                height: int | None = None, scheduler: str = "DPM++ 2M") -> tuple[Image.Image, list[GenerationParams]]:
    """The grid image and the parameters of every cell (row by row)."""
    cells: list[list[Image.Image]] = []
    params: list[GenerationParams] = []
    for weight in weights:
        row = []
        for column in columns:
            choice = LoraChoice(lora.path, weight, None if lora.text_weight is None else lora.text_weight * weight)
            (image, cell), = engine.generate(column.prompt, base=base, loras=[choice, *column.extra],
                                            negative_prompt=negative_prompt, seed=column.seed, steps=steps,
                                            guidance=guidance, width=width, height=height, scheduler=scheduler)
            row.append(image)
            params.append(cell)
        cells.append(row)
    name = Path(lora.path).stem
    return _compose(cells, [f"{name} {w:g}" for w in weights], [c.label for c in columns]), params


def _compose(cells: list[list[Image.Image]], row_labels: list[str], column_labels: list[str]) -> Image.Image:
    width, height = cells[0][0].size
    left = LABEL_PX * 4
    grid = Image.new("RGB", (left + width * len(column_labels), LABEL_PX + height * len(row_labels)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for c, label in enumerate(column_labels):
        draw.text((left + c * width + 4, 6), label, fill="black", font=font)
    for r, label in enumerate(row_labels):
        draw.text((4, LABEL_PX + r * height + height // 2 - 6), label, fill="black", font=font)
        for c, image in enumerate(cells[r]):
            grid.paste(image, (left + c * width, LABEL_PX + r * height))
    return grid


def save_grid(grid: Image.Image, path: Path, params: list[GenerationParams], rows: list[str], columns: list[str]) -> Path:
    """The grid PNG, with every cell's A1111 parameters and the axes in its text chunks; atomic."""

    info = PngInfo()
    info.add_text("parameters", "\n\n".join(p.to_text() for p in params))
    info.add_text("grid", f"rows: {' | '.join(rows)}\ncolumns: {' | '.join(columns)}")
    with atomic_write(path) as tmp:
        grid.save(tmp, format="PNG", pnginfo=info)
    return path

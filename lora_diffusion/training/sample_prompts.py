"""Samples during training the kohya way (``--sample-prompts FILE``): one prompt a line, with kohya's options
``--n`` negative prompt, ``--w``/``--h`` size, ``--d`` seed, ``--l`` CFG scale, ``--s`` steps; ``#`` starts a
comment. Each sample is saved as a PNG with A1111's parameters, so the UI, A1111 and ComfyUI read its settings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..generation.limits import MAX_IMAGES, MAX_SEED, MAX_SIDE, MAX_STEPS

MAX_FILE_BYTES = 1_000_000  # a prompt file is text a person wrote; anything larger is a mistake
_OPTION = re.compile(r"^(n|w|h|d|l|s)\s+(.*)$", re.S)
_IGNORED = ("ss", "cn", "am", "f", "g")  # kohya options for samplers/ControlNet/FLUX we do not take: named, skipped


@dataclass(frozen=True)
class SamplePrompt:
    """One line of the file with every option filled."""

    prompt: str
    negative: str
    width: int
    height: int
    seed: int
    cfg_scale: float
    steps: int


def parse_sample_prompts(path: str | Path, *, size: int, steps: int, seed: int, cfg_scale: float,
                         multiple: int = 8) -> list[SamplePrompt]:
    """The file's prompts; options a line leaves out take the run's values (``size`` px square, ``steps``, seed
    ``seed`` + the prompt's index, ``cfg_scale``). Sizes are rounded down to ``multiple``. Raises ``UserError``
    naming the line for a value that is not a number or out of range."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--sample-prompts {path}: no such file; give a text file with one prompt a line")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise UserError(f"--sample-prompts {path}: larger than {MAX_FILE_BYTES // 1000} kB; one prompt a line")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        prompts.append(_parse_line(line, f"{path.name} line {number}", size, steps, seed + len(prompts), cfg_scale,
                                   multiple))
    if not prompts:
        raise UserError(f"--sample-prompts {path}: no prompt in it (empty lines and # comments only)")
    if len(prompts) > MAX_IMAGES:
        raise UserError(f"--sample-prompts {path}: {len(prompts)} prompts; at most {MAX_IMAGES} per sampling")
    return prompts


def _parse_line(line: str, where: str, size: int, steps: int, seed: int, cfg_scale: float,
                multiple: int) -> SamplePrompt:
    parts = line.split(" --")
    values = {"n": "", "w": size, "h": size, "d": seed, "l": cfg_scale, "s": steps}
    for part in parts[1:]:
        match = _OPTION.match(part.strip())
        if not match:
            if part.strip().split(" ")[0] in _IGNORED:
                continue
            raise UserError(f"{where}: unknown option --{part.strip()[:20]}; kohya's options are --n negative, "
                            "--w width, --h height, --d seed, --l CFG scale, --s steps")
        key, text = match.group(1), match.group(2).strip()
        try:
            values[key] = text if key == "n" else (float(text) if key == "l" else int(text))
        except ValueError:
            raise UserError(f"{where}: --{key} {text[:20]!r} is not a number") from None
    width, height = (int(values[k]) // multiple * multiple for k in ("w", "h"))
    if not (multiple <= width <= MAX_SIDE and multiple <= height <= MAX_SIDE):
        raise UserError(f"{where}: size {values['w']}x{values['h']} must be {multiple}..{MAX_SIDE} px a side")
    if not 1 <= int(values["s"]) <= MAX_STEPS:
        raise UserError(f"{where}: --s {values['s']} steps must be 1..{MAX_STEPS}")
    if not 0 <= int(values["d"]) <= MAX_SEED:
        raise UserError(f"{where}: --d {values['d']} must be a seed in 0..{MAX_SEED}")
    return SamplePrompt(parts[0].strip(), str(values["n"]), width, height, int(values["d"]), float(values["l"]),
                        int(values["s"]))

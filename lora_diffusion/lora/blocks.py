"""Block-wise learning rates and ranks (kohya's ``down_lr_weight``/``mid_lr_weight``/``up_lr_weight``, ``block_dims``,
``train_block_indices``), for any denoiser: ``"BLOCK=VALUE,BLOCK=VALUE"`` where BLOCK names a module path prefix
(``down_blocks.1``, ``mid_block``, ``transformer_blocks.0-5`` for an index range, globs allowed; ``down``, ``mid`` and
``up`` are the UNet's ``down_blocks``, ``mid_block``, ``up_blocks``; ``double``/``single`` FLUX's and SD3's
``transformer_blocks``/``single_transformer_blocks``). Later entries win; modules no entry names keep the run's value.
A learning-rate weight of 0 leaves the block without LoRA (kohya's behaviour), as a rank of 0 does."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

from ..errors import UserError

ALIASES = {"down": "down_blocks", "mid": "mid_block", "up": "up_blocks", "double": "transformer_blocks",
           "single": "single_transformer_blocks"}
PRESETS = {  # the block-lr presets guides use
    "out-only": "down=0,mid=0",  # the UNet's up (output) blocks only: where style-only guides train
    "in-only": "mid=0,up=0",
}
_RANGE = re.compile(r"\.(\d+)-(\d+)(?=\.|$)")
MAX_RANGE = 1000


def parse_blocks(text: str, what: str, cast=float) -> list[tuple[str, float]]:
    """``[(block pattern, value)]`` from ``text`` (a preset name or BLOCK=VALUE entries); ``what`` names the flag in
    errors."""
    text = PRESETS.get(text.strip(), text)
    entries = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        block, sep, value = item.rpartition("=")
        if not sep or not block.strip():
            raise UserError(f"{what}: {item!r} is not BLOCK=VALUE (e.g. down=0.5,up_blocks.1=2"
                            f"{'' if what != '--block-lr' else '; presets: ' + ', '.join(PRESETS)})")
        try:
            number = cast(value)
        except ValueError:
            raise UserError(f"{what}: {value.strip()!r} in {item!r} is not a {'whole ' if cast is int else ''}number") from None
        if number < 0:
            raise UserError(f"{what}: {item!r} is negative")
        for pattern in _expand(ALIASES.get(block.strip(), block.strip()), what):
            entries.append((pattern, number))
    return entries


def _expand(block: str, what: str) -> list[str]:
    """``transformer_blocks.0-2`` → the three blocks."""
    match = _RANGE.search(block)
    if not match:
        return [block]
    low, high = int(match.group(1)), int(match.group(2))
    if high < low or high - low > MAX_RANGE:
        raise UserError(f"{what}: the range {low}-{high} in {block!r} must go up, and over at most {MAX_RANGE} blocks")
    return [p for i in range(low, high + 1)
            for p in _expand(block[:match.start()] + f".{i}" + block[match.end():], what)]


def block_value(path: str, entries: list[tuple[str, float]], default: float) -> float:
    """The value for module ``path``: the last entry whose block is a prefix of it (as whole path parts) or a
    block inside it, else ``default``."""
    value = default
    for pattern, number in entries:
        if fnmatchcase(path, pattern) or fnmatchcase(path, f"{pattern}.*") or fnmatchcase(path, f"*.{pattern}.*"):
            value = number
    return value


def unmatched(entries: list[tuple[str, float]], paths: list[str]) -> list[str]:
    """The blocks no module path falls in (a typo, or another family's block names)."""
    return [p for p, _ in entries if not any(block_value(path, [(p, 1.0)], 0.0) for path in paths)]

"""Write the bundled example style folders: world scenes in a look the base does not draw.

    python examples/make_style_folders.py        # rewrites examples/styles/<style>/

Each image has a same-name .txt caption (the kohya/A1111 convention) describing its
content in the base model's words; the style itself is what a LoRA should learn.
"""

from __future__ import annotations

import random
from pathlib import Path

from lora_diffusion.world.scenes import caption, sample_scene
from lora_diffusion.world.styles import STYLES, stylize

COUNT = 24


def main() -> None:
    root = Path(__file__).resolve().parent / "styles"
    for index, style in enumerate(STYLES):
        folder = root / style
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*"):
            old.unlink()
        rng = random.Random(9000 + index)
        for i in range(COUNT):
            scene = sample_scene(rng)
            stylize(style, scene).save(folder / f"{i:03d}.png")
            (folder / f"{i:03d}.txt").write_text(caption(scene) + "\n")
        print(f"wrote {COUNT} images to {folder}")


if __name__ == "__main__":
    main()

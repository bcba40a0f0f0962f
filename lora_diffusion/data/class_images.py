"""Class images for prior preservation (``--reg-generate N --class-prompt P``): made with the base itself, before
any LoRA is added, once — a later run with the same prompt, base size and count finds them and makes only what is
missing — in a folder beside the data, and trained on as a regularization subset."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import torch

from ..safe_write import atomic_write


def class_image_folder(cfg) -> Path:
    """Where the class images of ``cfg``'s prompt and size live: beside the data folder (or the dataset config)."""
    anchor = Path(cfg.data or cfg.dataset_config).resolve()
    slug = re.sub(r"[^a-z0-9]+", "-", cfg.class_prompt.lower()).strip("-")[:40] or "class"
    digest = hashlib.sha256(f"{cfg.class_prompt}|{cfg.base}|{cfg.resolution}".encode()).hexdigest()[:8]
    return anchor.parent / f"{anchor.stem}-class-images" / f"{slug}-{cfg.resolution}px-{digest}"


@torch.no_grad()
def make_class_images(pipe, cfg, steps: int, guidance: float, report: bool) -> Path:
    """``cfg.reg_generate`` images of ``cfg.class_prompt`` in ``class_image_folder(cfg)`` (those there are kept),
    captioned with the prompt; returns the folder."""
    folder = class_image_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    have = {p.stem for p in folder.glob("*.png") if (folder / f"{p.stem}.txt").is_file()}
    missing = [i for i in range(cfg.reg_generate) if f"{i:05d}" not in have]
    if report:
        print(f"class images: {cfg.reg_generate - len(missing)} of {cfg.reg_generate} of {cfg.class_prompt!r} found in "
              f"{folder}" + (f"; making {len(missing)} with the base" if missing else ""), file=sys.stderr)
    for i in missing:  # one at a time, each its own seed: the same images whatever was there before
        image = pipe(cfg.class_prompt, num_inference_steps=steps, guidance_scale=guidance, height=cfg.resolution,
                     width=cfg.resolution, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + i)).images[0]
        with atomic_write(folder / f"{i:05d}.png") as tmp:
            image.save(tmp, format="PNG")
        (folder / f"{i:05d}.txt").write_text(cfg.class_prompt + "\n", encoding="utf-8")
    return folder

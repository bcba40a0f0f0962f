"""`lora-diffusion quickstart`: the README's main job.

Trains a sepia style LoRA on the bundled example folder with the built-in base
(CPU, offline), then writes a comparison grid — prompts × LoRA weight 0, 0.5, 1 —
and prints the style score at each weight and the training time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from .formatting import ShowDefaults

REPO = Path(__file__).resolve().parents[2]


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "quickstart",
        help="train a style LoRA on the bundled example with the built-in base, then compare (offline, CPU)",
        description="Train a sepia style LoRA on examples/styles/sepia and write a comparison grid to --out.",
        formatter_class=ShowDefaults,
    )
    parser.add_argument("--out", default="quickstart-output", help="folder for the adapter, logs and the comparison grid")
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"), help="training config")
    parser.add_argument("--data", default=str(REPO / "examples" / "styles" / "sepia"), help="style image folder")
    parser.add_argument("--style", default="sepia", help="style score to report (sepia, pixel, cyanotype or ink)")
    parser.add_argument("--prompts", type=int, default=6, help="prompts in the comparison grid")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from .. import load_adapter, pipeline_components, set_adapter_weight
    from ..models.loading import load_pipeline
    from ..training.config import TrainConfig, apply_values, load_yaml
    from ..training.trainer import train
    from ..world.content import content_kept
    from ..world.quality import held_out_scenes
    from ..world.scenes import caption
    from ..world.styles import style_score

    out = Path(args.out)
    config = apply_values(TrainConfig(), load_yaml(args.config), f"config {args.config}")
    config.data, config.output = args.data, str(out / f"{args.style}.safetensors")
    print(f"training a {args.style} style LoRA on {args.data} with the built-in base (settings derived: see the plan)")
    result = train(config.validate())
    print(f"training took {result.seconds:.0f} s; wrote {result.output}")

    pipe = load_pipeline("builtin")
    components = pipeline_components(pipe)
    name = load_adapter(result.output, components)
    scenes = held_out_scenes(args.prompts)
    prompts = [caption(s) for s in scenes]
    weights = (0.0, 0.5, 1.0)
    size = 64
    grid = Image.new("RGB", (size * len(prompts), size * len(weights)), "white")
    scores, drawn = {}, {}
    for row, weight in enumerate(weights):
        set_adapter_weight(components["unet"], name, weight)
        started = time.time()
        images = pipe(prompts, num_inference_steps=20, guidance_scale=5.0, height=size, width=size,
                      generator=torch.Generator().manual_seed(0)).images
        scores[weight] = float(np.mean([style_score(args.style, im) for im in images]))
        drawn[weight] = images
        for col, image in enumerate(images):
            grid.paste(image, (col * size, row * size))
        print(f"LoRA weight {weight:.1f}: {args.style} style score {scores[weight]:.3f} ({time.time() - started:.1f} s for {len(prompts)} images)")
    grid_path = out / "comparison.png"
    grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(grid_path)
    (out / "comparison-prompts.txt").write_text("rows: LoRA weight 0, 0.5, 1.0\n" + "\n".join(prompts) + "\n")
    print(f"wrote {grid_path} (rows: weight 0, 0.5, 1.0; prompts in comparison-prompts.txt)")
    print(f"style score {args.style}: weight 0 → {scores[0.0]:.3f}, weight 1 → {scores[1.0]:.3f} "
          f"({scores[1.0] / max(scores[0.0], 1e-6):.1f}×); training {result.seconds:.0f} s")
    # a style LoRA should repaint the base's scene, not replace it: compare weight 1 with weight 0, restyled by code
    print(f"content kept at weight 1: {content_kept(args.style, scenes, drawn[0.0], drawn[1.0])}")
    return 0

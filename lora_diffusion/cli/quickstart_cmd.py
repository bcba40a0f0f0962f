"""`lora-diffusion quickstart`: the README's main job.

Trains a sepia style LoRA on the bundled example folder with the built-in base
(CPU, offline), then writes a comparison grid — prompts × LoRA weight 0, 0.5, 1 —
and prints the style score at each weight and the training time.
"""

from __future__ import annotations

import argparse
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


def comparison_rows(pipe, unet, name: str, prompts: list[str], weights, size: int) -> dict:
    """weight -> the images of ``prompts`` with adapter ``name`` at that weight (same seed for every row), with a
    progress bar per row on stderr (each row takes 10 s to 2 min on a CPU)."""
    import torch

    from ..lora.inject import set_adapter_weight

    drawn = {}
    for weight in weights:
        set_adapter_weight(unet, name, weight)
        pipe.set_progress_bar_config(disable=False, desc=f"weight {weight:.1f}", leave=True)
        drawn[weight] = pipe(prompts, num_inference_steps=20, guidance_scale=5.0, height=size, width=size,
                             generator=torch.Generator().manual_seed(0)).images
    pipe.set_progress_bar_config(disable=True)
    return drawn


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from .. import load_adapter, pipeline_components
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
    print(f"generating the comparison: {len(prompts)} prompts at LoRA weights {', '.join(map(str, weights))}, "
          "20 steps each", flush=True)
    drawn = comparison_rows(pipe, components["unet"], name, prompts, weights, size)
    scores = {w: float(np.mean([style_score(args.style, im) for im in images])) for w, images in drawn.items()}
    grid = Image.new("RGB", (size * len(prompts), size * len(weights)), "white")
    for row, weight in enumerate(weights):
        for col, image in enumerate(drawn[weight]):
            grid.paste(image, (col * size, row * size))
        print(f"LoRA weight {weight:.1f}: {args.style} style score {scores[weight]:.3f}")
    grid_path = out / "comparison.png"
    grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(grid_path)
    (out / "comparison-prompts.txt").write_text("rows: LoRA weight 0, 0.5, 1.0\n" + "\n".join(prompts) + "\n")
    print(f"wrote {grid_path} (rows: weight 0, 0.5, 1.0; prompts in comparison-prompts.txt)")
    print(f"style score {args.style}: weight 0 → {scores[0.0]:.3f}, weight 1 → {scores[1.0]:.3f} "
          f"({scores[1.0] / max(scores[0.0], 1e-6):.1f}×); training {result.seconds:.0f} s")
    # a style LoRA should repaint the base's scene, not replace it: compare weight 1 with weight 0, restyled by code
    print(f"content kept at weight 1: {content_kept(args.style, scenes, drawn[0.0], drawn[1.0])}")
    return 0

"""Measure the built-in base model: quality rates, disk size, CPU generation time.

    python train_scripts/eval_base.py [MODEL_DIR] [--n 200] [--grid grid.png]

Quality: for n held-out random captions, the share of images whose object colour,
background colour and shape the checker reads as the caption says.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from lora_diffusion.models.builtin import builtin_path
    from lora_diffusion.world.quality import evaluate, held_out_scenes
    from lora_diffusion.world.scenes import caption

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, default=builtin_path())
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--grid", type=Path, default=None, help="write a grid of the first 32 held-out images")
    parser.add_argument("--cpu-timing", action="store_true", help="time one 20-step image with guidance on the CPU")
    args = parser.parse_args()

    print(f"model: {args.model} ({folder_bytes(args.model) / 1e6:.1f} MB on disk)")
    pipe = StableDiffusionPipeline.from_pretrained(str(args.model)).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    started = time.time()
    report = evaluate(pipe, n=args.n, steps=args.steps, guidance=args.guidance)
    print(f"quality ({args.steps} steps, guidance {args.guidance}, {args.device}, {time.time() - started:.0f} s): {report}")
    if args.grid:
        scenes = held_out_scenes(32)
        images = pipe([caption(s) for s in scenes], num_inference_steps=args.steps, guidance_scale=args.guidance,
                      generator=torch.Generator().manual_seed(0), height=64, width=64).images
        grid = Image.new("RGB", (8 * 64, 4 * 64))
        for i, image in enumerate(images):
            grid.paste(image, ((i % 8) * 64, (i // 8) * 64))
        grid.save(args.grid)
        print(f"wrote {args.grid}; captions: " + " | ".join(caption(s) for s in scenes[:8]))
    if args.cpu_timing:
        cpu = StableDiffusionPipeline.from_pretrained(str(args.model))
        cpu.set_progress_bar_config(disable=True)
        cpu("warm up", num_inference_steps=2, height=64, width=64)
        times = []
        for seed in range(3):
            t = time.time()
            cpu("a red circle on a white background", num_inference_steps=20, guidance_scale=5.0, height=64, width=64,
                generator=torch.Generator().manual_seed(seed))
            times.append(time.time() - t)
        print(f"cpu: one image, 20 steps with guidance: best {min(times):.2f} s, median {sorted(times)[1]:.2f} s "
              f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()

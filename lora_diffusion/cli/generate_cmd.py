"""`lora-diffusion generate PROMPT [--lora FILE[:WEIGHT]] ...`: PNGs with A1111 parameters."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..generation.schedulers import sampler_names


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "generate",
        help="generate images with a base model and any LoRAs blended by weight",
        description="Write PNGs (parameters in the PNG text chunk 'parameters') and print each path.",
    )
    parser.add_argument("prompt", metavar="PROMPT")
    parser.add_argument("--negative-prompt", default="", metavar="TEXT")
    parser.add_argument("--base", default="builtin", help="builtin, a diffusers folder, a .safetensors checkpoint, or a hub id")
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT[:TEXT_WEIGHT]]",
                        help="LoRA to blend (repeatable); WEIGHT defaults to 1.0, may be negative or > 1; "
                             "TEXT_WEIGHT sets the text-encoder weight separately")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first image (default: random)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    parser.add_argument("--width", type=int, default=None, help="default: the base model's native size")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--num-images", type=int, default=1)
    parser.add_argument("--scheduler", default="DPM++ 2M", help=f"one of: {', '.join(sampler_names())}")
    parser.add_argument("--out", default="outputs", help="folder for the PNGs")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow a .ckpt/.pt/.bin base (read with torch.load(weights_only=True))")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..generation.engine import GenerationEngine, LoraChoice, next_index
    from ..generation.params import save_png

    choices = [LoraChoice.parse(spec) for spec in args.lora]
    engine = GenerationEngine(allow_pickle=args.allow_pickle)
    results = engine.generate(
        args.prompt, base=args.base, loras=choices, negative_prompt=args.negative_prompt, seed=args.seed,
        steps=args.steps, guidance=args.guidance, width=args.width, height=args.height,
        num_images=args.num_images, scheduler=args.scheduler,
    )
    out = Path(args.out)
    index = next_index(out)
    for offset, (image, params) in enumerate(results):
        path = save_png(image, out / f"{index + offset:05d}-{params.seed}.png", params)
        print(path)
    return 0

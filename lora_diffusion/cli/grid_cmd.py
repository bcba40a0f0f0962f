"""`lora-diffusion grid PROMPT --lora FILE --weights 0,0.5,1 [--seeds 1,2,3 | --prompts ... | --lora2 ...]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..generation.defaults import DEFAULT_CFG, DEFAULT_SAMPLER, DEFAULT_STEPS
from ..generation.schedulers import sampler_names
from .formatting import ShowDefaults


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "grid",
        help="compare LoRA weights: one labelled PNG, rows = weights, columns = seeds, prompts or a second LoRA",
        description="A1111's X/Y plot for LoRA weights. Every cell of a column uses the same seed, so only the "
                    "weight changes down a column; the PNG keeps each cell's parameters.",
        formatter_class=ShowDefaults,
    )
    parser.add_argument("prompt", metavar="PROMPT", help="what to draw (the first column's prompt with --prompts)")
    parser.add_argument("--lora", required=True, metavar="FILE[:WEIGHT[:TEXT_WEIGHT]]",
                        help="the LoRA whose weights make the rows (a TEXT_WEIGHT scales with the row's weight)")
    parser.add_argument("--weights", default="0,0.25,0.5,0.75,1", help="row weights, comma-separated")
    parser.add_argument("--seeds", default="1", help="column seeds, comma-separated (one seed for --prompts/--lora2)")
    parser.add_argument("--prompts", default=None, metavar="FILE",
                        help="columns: PROMPT, then one prompt per line of FILE (all at the first seed)")
    parser.add_argument("--lora2", default=None, metavar="FILE", help="columns: a second LoRA at --weights2")
    parser.add_argument("--weights2", default="0,0.5,1", help="column weights of --lora2")
    parser.add_argument("--base", default="builtin", help="builtin, a diffusers folder, a .safetensors checkpoint, or a hub id")
    parser.add_argument("--negative-prompt", default="", metavar="TEXT", help="what every cell should not show")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"denoising steps (default: the base family's; {DEFAULT_STEPS} for SD)")
    parser.add_argument("--guidance", type=float, default=None,
                        help=f"classifier-free guidance scale (CFG) (default: the base family's; {DEFAULT_CFG} for SD)")
    parser.add_argument("--width", type=int, default=None, help="cell width (default: the base's native size)")
    parser.add_argument("--height", type=int, default=None, help="cell height (default: the base's native size)")
    parser.add_argument("--scheduler", default=None,
                        help=f"sampler: {', '.join(sampler_names())} (default: the base family's; {DEFAULT_SAMPLER} for SD)")
    parser.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA GPUs, fp32 on the CPU), fp16, bf16 or fp32")
    parser.add_argument("--out", default="grid.png", help="the grid PNG to write")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from ..generation.engine import GenerationEngine, LoraChoice
    from ..generation.grid import grid_columns, parse_numbers, save_grid, weight_grid
    from ..generation.precision import generation_dtype
    from ..writable import writable_file

    from .generate_cmd import fill_generation_defaults

    fill_generation_defaults(args)
    lora = LoraChoice.parse(args.lora)
    for path, flag in ((lora.path, "--lora"), (args.lora2, "--lora2")):
        if path and not Path(path).is_file():
            raise UserError(f"{flag} {path}: file not found; check the path")
    weights = parse_numbers(args.weights, "--weights")
    seeds = parse_numbers(args.seeds, "--seeds", int)
    if args.prompts is not None and args.lora2:
        raise UserError("--prompts and --lora2 both make columns; pick one")
    prompts = None
    if args.prompts is not None:
        try:
            prompts = [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"--prompts {args.prompts}: cannot read it ({type(error).__name__}); give a text file "
                            "with one prompt per line") from None
    weights2 = parse_numbers(args.weights2, "--weights2") if args.lora2 else None
    columns = grid_columns(args.prompt, seeds, prompts=prompts, lora2=args.lora2, weights2=weights2)
    out = writable_file(args.out, "--out")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine = GenerationEngine(device=device, dtype=generation_dtype(args.dtype, device))
    grid, params = weight_grid(engine, base=args.base, lora=lora, weights=weights, columns=columns,
                               negative_prompt=args.negative_prompt, steps=args.steps, guidance=args.guidance,
                               width=args.width, height=args.height, scheduler=args.scheduler)
    path = save_grid(grid, out, params, [f"{Path(lora.path).stem} {w:g}" for w in weights],
                     [c.label for c in columns])
    print(path)
    return 0

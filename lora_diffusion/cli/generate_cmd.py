"""`lora-diffusion generate PROMPT [--lora FILE[:WEIGHT]] ...`: PNGs with A1111 parameters."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..generation.defaults import DEFAULT_CFG, DEFAULT_SAMPLER, DEFAULT_STEPS
from ..generation.schedulers import sampler_names
from ..writable import writable_folder
from .formatting import ShowDefaults


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "generate",
        help="generate images with a base model and any LoRAs blended by weight",
        description="Write PNGs (parameters in the PNG text chunk 'parameters') and print each path.",
        formatter_class=ShowDefaults,
    )
    parser.add_argument("prompt", metavar="PROMPT", nargs="?", default=None,
                        help="what to draw; <lora:NAME:WEIGHT> tags pick LoRAs from --lora-dir")
    parser.add_argument("--from-png", default=None, metavar="FILE",
                        help="take prompt, negative prompt, seed, steps, sampler, CFG, size and LoRAs (from --lora-dir) "
                             "from a PNG's parameters (ours or A1111's); flags given here win")
    parser.add_argument("--negative-prompt", default="", metavar="TEXT", help="what to steer away from")
    parser.add_argument("--base", default="builtin", help="builtin, a diffusers folder, a .safetensors checkpoint, or a hub id")
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT[:TEXT_WEIGHT]]",
                        help="LoRA to blend (repeatable); WEIGHT defaults to 1.0, may be negative or > 1; "
                             "TEXT_WEIGHT sets the text-encoder weight separately")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first image (default: random)")
    # None = "not given": --from-png may then fill it; otherwise the defaults in generation/params.py apply
    parser.add_argument("--steps", type=int, default=None, help=f"denoising steps (default: the base family's; {DEFAULT_STEPS} for SD)")
    parser.add_argument("--guidance", type=float, default=None,
                        help=f"classifier-free guidance scale (CFG) (default: the base family's; {DEFAULT_CFG} for SD)")
    parser.add_argument("--width", type=int, default=None, help="image width (default: the base's native size, "
                        "64 for the built-in base)")
    parser.add_argument("--height", type=int, default=None, help="image height (default: the base's native size)")
    parser.add_argument("--num-images", type=int, default=1, help="images to write (seeds S, S+1, ...)")
    parser.add_argument("--scheduler", default=None,
                        help=f"sampler: {', '.join(sampler_names())} (default: the base family's; {DEFAULT_SAMPLER} for SD)")
    parser.add_argument("--out", default="outputs", help="folder for the PNGs")
    parser.add_argument("--lora-dir", default="loras", help="folder where <lora:NAME:WEIGHT> prompt tags find NAME.safetensors")
    parser.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA GPUs, fp32 on the CPU), fp16, bf16 or fp32")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow a .ckpt/.pt/.bin base (read with torch.load(weights_only=True))")
    parser.set_defaults(run=run, parser=parser)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from ..generation.engine import GenerationEngine, LoraChoice, next_index
    from ..generation.params import save_png
    from ..generation.precision import generation_dtype
    from ..generation.prompt_tags import resolve_tag, split_lora_tags

    # every input is checked before the base loads: a typo costs a second, not a model load
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = generation_dtype(args.dtype, device)
    if args.from_png:
        _fill_from_png(args)
    fill_generation_defaults(args)
    if args.prompt is None:
        args.parser.error("the following arguments are required: PROMPT")  # as when it was positional-only
    if not args.prompt.strip():
        raise UserError("PROMPT is empty; write what to draw (or use --from-png FILE to reuse an image's parameters)")
    prompt, tags = split_lora_tags(args.prompt)
    choices = [LoraChoice.parse(spec) for spec in args.lora]
    choices += [LoraChoice(str(resolve_tag(tag, args.lora_dir)), tag.weight, tag.text_weight) for tag in tags]
    for choice in choices:
        if not Path(choice.path).is_file():
            raise UserError(f"--lora {choice.path}: file not found; check the path")
    if not any(name.lower() == args.scheduler.strip().lower() for name in sampler_names()):
        raise UserError(f"--scheduler {args.scheduler!r} is not known; choose one of: {', '.join(sampler_names())}")
    writable_folder(args.out, "--out")
    engine = GenerationEngine(device=device, dtype=dtype, allow_pickle=args.allow_pickle)
    results = engine.generate(
        prompt, base=args.base, loras=choices, negative_prompt=args.negative_prompt, seed=args.seed,
        steps=args.steps, guidance=args.guidance, width=args.width, height=args.height,
        num_images=args.num_images, scheduler=args.scheduler,
    )
    out = Path(args.out)
    index = next_index(out)
    for offset, (image, params) in enumerate(results):
        path = save_png(image, out / f"{index + offset:05d}-{params.seed}.png", params)
        print(path)
    return 0


def _fill_from_png(args: argparse.Namespace) -> None:
    """Settings the command line left at their defaults come from the PNG's parameters."""
    from ..generation.params import read_png_params

    path = Path(args.from_png)
    try:
        params = read_png_params(path)
    except FileNotFoundError:
        raise UserError(f"--from-png {path}: file not found; check the path") from None
    except UserError as error:
        raise UserError(f"--from-png {path}: {error}") from None
    except KeyError:
        raise UserError(f"--from-png {path}: no generation parameters in this PNG (A1111 'parameters' text)") from None
    except Exception as error:  # noqa: BLE001 - PIL raises many types for non-PNG files
        raise UserError(f"--from-png {path}: not a readable PNG ({type(error).__name__})") from None
    if not args.prompt and not params.prompt.strip():
        raise UserError(f"--from-png {path}: its parameters hold no prompt; give one: generate \"PROMPT\" --from-png ...")
    tags = "".join(f" <lora:{name}:{weight:g}>" for name, weight in params.loras)
    args.prompt = args.prompt or (params.prompt + tags)
    args.negative_prompt = args.negative_prompt or params.negative_prompt
    args.seed = params.seed if args.seed is None else args.seed
    args.width = args.width or params.width
    args.height = args.height or params.height
    for key, value in (("steps", params.steps), ("guidance", params.cfg_scale), ("scheduler", params.sampler)):
        if getattr(args, key) is None and value:  # a flag the user gave wins, even when it equals the default
            setattr(args, key, value)


def fill_generation_defaults(args: argparse.Namespace) -> None:
    """Steps, guidance and sampler that neither the command line nor --from-png gave: the base family's (``generate``
    and ``grid`` alike)."""
    from ..families import generation_defaults_of_base

    defaults = generation_defaults_of_base(args.base)
    for key, default in (("steps", defaults.steps), ("guidance", defaults.cfg), ("scheduler", defaults.sampler)):
        if getattr(args, key) is None:
            setattr(args, key, default)

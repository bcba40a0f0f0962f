"""`lora-diffusion bake --lora FILE[:WEIGHT] ... --out DIR [--base BASE] [--single-file [FILE]]`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bake",
        help="merge LoRAs with weights into the base and save a full diffusers pipeline folder",
        description="Blend the LoRAs into the base model's weights for good and write a diffusers folder "
                    "(loads with from_pretrained, needs no LoRA support). --single-file also writes one "
                    "original-layout .safetensors checkpoint for A1111 / ComfyUI.",
    )
    parser.add_argument("--lora", action="append", required=True, metavar="FILE[:WEIGHT[:TEXT_WEIGHT]]",
                        help="LoRA to merge (repeatable); WEIGHT defaults to 1.0")
    parser.add_argument("--out", required=True, help="output folder (must not exist yet)")
    parser.add_argument("--base", default="builtin", help="builtin, a diffusers folder, a single-file checkpoint, or a hub id")
    parser.add_argument("--single-file", nargs="?", const="", default=None, metavar="FILE",
                        help="also write an original-layout checkpoint (default path: OUT.safetensors)")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"),
                        help="dtype of the single-file checkpoint (the folder keeps the base's dtype)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow a .ckpt/.pt/.bin base (read with torch.load(weights_only=True))")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..adapters.apply import apply_adapter, components_architecture, pipeline_components
    from ..adapters.file import read_adapter
    from ..errors import UserError
    from ..generation.engine import LoraChoice
    from ..lora.inject import bake_lora, set_adapter_weight
    from ..models.loading import load_pipeline
    from ..file_modes import make_tree_like_new
    from ..safe_write import atomic_write
    from ..models.single_file import save_single_file
    from ..models.portable_save import save_pipeline
    from ..printable import safe_text

    out = Path(args.out)
    if out.exists():
        raise UserError(f"--out {out} already exists; choose a new folder name or delete it first")
    choices = [LoraChoice.parse(spec) for spec in args.lora]
    adapters = [(read_adapter(c.path), c) for c in choices]  # every file checked before the base loads
    pipe = load_pipeline(args.base, allow_pickle=args.allow_pickle)
    components = pipeline_components(pipe)
    arch = components_architecture(components)
    for index, (adapter, choice) in enumerate(adapters):
        name = f"bake{index}"
        apply_adapter(adapter, components, name, weight=choice.weight, source=f"file {choice.path}")
        if choice.text_weight is not None:
            for role, model in components.items():
                if role != "unet":
                    try:
                        set_adapter_weight(model, name, choice.text_weight)
                    except KeyError:
                        pass  # this LoRA has no text-encoder part
    for model in components.values():
        bake_lora(model)
    with atomic_write(out) as tmp:
        save_pipeline(pipe, tmp)
        make_tree_like_new(tmp)  # safetensors writes its files private
    print(f"wrote {safe_text(out)} (diffusers folder, {len(choices)} LoRA(s) merged into {arch})")
    if args.single_file is not None:
        target = Path(args.single_file) if args.single_file else out.with_suffix(".safetensors")
        path = save_single_file(pipe, target, arch, dtype=args.dtype)
        print(f"wrote {safe_text(path)} (original-layout single file, {args.dtype})")
    return 0

"""`lora-diffusion convert IN OUT --format kohya|diffusers`: rewrite a LoRA in another layout."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert",
        help="rewrite a LoRA file in kohya/A1111 or diffusers/PEFT layout (strength preserved)",
        description="Read a LoRA in any supported layout and write it in the chosen one. kohya is what "
                    "A1111, ComfyUI and kohya's scripts load; diffusers is what load_lora_weights and PEFT load.",
    )
    parser.add_argument("input", metavar="IN", help="LoRA .safetensors (kohya, diffusers or PEFT layout)")
    parser.add_argument("output", metavar="OUT", help="output .safetensors")
    parser.add_argument("--format", required=True, choices=("kohya", "diffusers"), help="layout to write")
    parser.add_argument("--dtype", default=None, choices=("fp16", "bf16", "fp32"),
                        help="tensor dtype of OUT (default: the input's)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..adapters.file import file_dtype, read_adapter, write_adapter
    from .outputs import check_output, replaced_note
    from ..printable import safe_text

    existed = check_output(args.output, [args.input], flag="OUT")
    adapter = read_adapter(args.input)
    dtype = args.dtype or file_dtype(adapter)
    path = write_adapter(adapter, args.output, dtype=dtype, layout=args.format)
    print(f"wrote {safe_text(path)} ({args.format} layout, {len(adapter.modules)} modules, {dtype}){replaced_note(path, existed)}")
    return 0



"""`lora-diffusion resize IN --rank R --out FILE`: lower a LoRA's rank by SVD."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "resize",
        help="lower a LoRA's rank by SVD (fixed rank, or dynamic by kept energy); prints the error",
        description="Per module, keep the largest singular directions of its weight change ((alpha/r)·B·A, or the "
                    "ΔW of a LoHa/LoKr/full module). Accepts LoRA, LoCon, LoHa, LoKr and full-diff files and always "
                    "writes a plain LoRA; DoRA files are refused (not additive). The printed error is "
                    "the dropped share: sqrt(Σ dropped σ² / Σ σ²).",
    )
    parser.add_argument("input", metavar="IN")
    parser.add_argument("--rank", type=int, default=None, help="new rank for every module")
    parser.add_argument("--keep-energy", type=float, default=None, metavar="F",
                        help="instead of --rank: per module, the smallest rank keeping this share (0-1) of Σσ²")
    parser.add_argument("--out", required=True, help="output .safetensors")
    parser.add_argument("--format", default="kohya", choices=("kohya", "diffusers"), help="layout to write")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="tensor dtype of the output")
    parser.add_argument("--verbose", action="store_true", help="print every module's rank and error")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..adapters.file import read_adapter, write_adapter
    from ..adapters.tools import resize_adapter
    from .outputs import check_output, replaced_note
    from ..printable import safe_text

    existed = check_output(args.out, [args.input])
    adapter = read_adapter(args.input)
    resized, report = resize_adapter(adapter, rank=args.rank, keep_energy=args.keep_energy)
    path = write_adapter(resized, args.out, dtype=args.dtype, layout=args.format)
    if args.verbose:
        for module in report.modules:
            print(f"  {module.name}: rank {module.rank}, relative error {module.relative_error:.3e}")
    ranks = sorted({m.rank for m in report.modules})
    print(f"wrote {safe_text(path)} (rank {ranks[0] if len(ranks) == 1 else f'{ranks[0]}-{ranks[-1]}'}; {report.summary()}){replaced_note(path, existed)}")
    return 0

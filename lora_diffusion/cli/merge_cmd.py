"""`lora-diffusion merge IN[:WEIGHT] ... --out FILE [--rank R]`: several LoRAs into one."""

from __future__ import annotations

import argparse

# each input adds its rank to an exact merge: 200 inputs made a rank-1600 "LoRA" larger than the base's layers
MAX_MERGE_INPUTS = 32


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "merge",
        help="merge LoRAs with weights into one file (exact, or SVD to --rank)",
        description="Without --rank the result is exact: ranks are concatenated, so it equals blending the "
                    "inputs at their weights (modules with LoHa/LoKr inputs become exact full weight differences). "
                    "With --rank the blend is reduced per module by SVD to a plain LoRA and the relative error is "
                    "printed. DoRA inputs are refused: not additive; blend them at generation time or use bake.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IN[:WEIGHT]", help="LoRA files, each with an optional weight (default 1.0)")
    parser.add_argument("--out", required=True, help="output .safetensors")
    parser.add_argument("--rank", type=int, default=None, help="reduce to this rank by SVD (default: exact)")
    parser.add_argument("--format", default="kohya", choices=("kohya", "diffusers"), help="layout to write")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="tensor dtype of the output")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..adapters.file import read_adapter, write_adapter
    from ..adapters.tools import merge_adapters_exact, merge_adapters_svd, refuse_dora
    from ..generation.engine import LoraChoice
    from ..errors import UserError
    from .outputs import check_output, replaced_note
    from ..printable import safe_text

    choices = [LoraChoice.parse(spec) for spec in args.inputs]
    if len(choices) > MAX_MERGE_INPUTS:
        raise UserError(f"merge: {len(choices)} inputs; at most {MAX_MERGE_INPUTS} (merge in steps, or use --rank "
                        "on each partial result)")
    existed = check_output(args.out, [c.path for c in choices])
    inputs = []
    for choice in choices:
        adapter = read_adapter(choice.path)
        refuse_dora(adapter, "merge", str(choice.path))
        inputs.append((adapter, choice.weight))
    if args.rank is None:
        merged = merge_adapters_exact(inputs)
        note = f"exact, rank {merged.rank}" if merged.rank else "exact"
        full = sum(1 for m in merged.modules.values() if m.kind == "full")
        if full:
            note += (f"; {full} modules with LoHa/LoKr/Tucker inputs kept exactly as full weight differences "
                     "(LyCORIS diff, large): pass --rank R for a small LoRA")
    else:
        merged, report = merge_adapters_svd(inputs, args.rank)
        note = f"SVD to rank {args.rank}; {report.summary()}"
    path = write_adapter(merged, args.out, dtype=args.dtype, layout=args.format)
    print(f"wrote {safe_text(path)} ({len(merged.modules)} modules; {note}){replaced_note(path, existed)}")
    return 0

"""`lora-diffusion extract --base BASE --tuned MODEL --rank R --out FILE`: a LoRA from two models."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "extract",
        help="make a LoRA of rank R from the difference between a fine-tuned model and its base (SVD)",
        description="Writes a plain LoRA: per module, the best rank-R approximation (SVD) of tuned − base. Prints each module's "
                    "relative error ‖Δ − Δ_R‖/‖Δ‖ and the overall one.",
    )
    parser.add_argument("--base", required=True, help="the base model (builtin, folder, single file, hub id)")
    parser.add_argument("--tuned", required=True, help="the fine-tuned model of the same architecture")
    parser.add_argument("--rank", type=int, required=True,
                        help="rank of the extracted LoRA (the difference's best rank-r approximation per layer)")
    parser.add_argument("--out", required=True, help="output .safetensors")
    parser.add_argument("--targets", default="full", help="UNet modules: attn, attn-ff or full (default)")
    parser.add_argument("--text-targets", default="attn-mlp", help="text-encoder modules: attn or attn-mlp (default)")
    parser.add_argument("--format", default="kohya", choices=("kohya", "diffusers"), help="layout to write")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="tensor dtype of the output")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow .ckpt/.pt/.bin models (read with torch.load(weights_only=True))")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..adapters.apply import components_architecture, pipeline_components
    from ..adapters.file import META_PREFIX, write_adapter
    from ..adapters.tools import extract_difference
    from ..families import get
    from ..models.loading import load_pipeline
    from .outputs import check_output, replaced_note
    from ..printable import safe_text

    existed = check_output(args.out, [args.base, args.tuned])
    base = pipeline_components(load_pipeline(args.base, allow_pickle=args.allow_pickle))
    tuned = pipeline_components(load_pipeline(args.tuned, allow_pickle=args.allow_pickle))
    adapter, report = extract_difference(base, tuned, args.rank, targets={"unet": args.targets, "text": args.text_targets})
    arch = components_architecture(base)
    adapter.metadata = {
        META_PREFIX + "version": __version__,
        META_PREFIX + "base": arch,
        META_PREFIX + "extracted": f"rank {args.rank}; {report.summary()}",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(args.rank),
        "ss_network_alpha": str(args.rank),
        "ss_base_model_version": get(arch).kohya_version,
    }
    for module in report.modules:
        print(f"  {module.name}: rank {module.rank}, relative error {module.relative_error:.3e}")
    path = write_adapter(adapter, args.out, dtype=args.dtype, layout=args.format)
    print(f"wrote {safe_text(path)} ({len(adapter.modules)} modules; {report.summary()}){replaced_note(path, existed)}")
    return 0

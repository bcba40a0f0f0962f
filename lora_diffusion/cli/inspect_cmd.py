"""`lora-diffusion inspect FILE [--json]`: what an adapter file holds."""

from __future__ import annotations

import argparse
import json

from ..adapters.paths import checked_adapter_path
from ..printable import safe_text


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "inspect",
        help="show rank, alpha, targeted modules, base architecture, size and metadata of a LoRA file",
        description="Show what a LoRA .safetensors file holds.",
    )
    parser.add_argument("file", metavar="FILE", help="LoRA .safetensors file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    path = checked_adapter_path(args.file)  # a wrong path is answered before torch loads
    from ..adapters.file import read_adapter
    from ..adapters.summary import describe

    info = describe(read_adapter(path), path)
    if args.json:
        print(json.dumps(info, ensure_ascii=True))
        return 0
    comps = ", ".join(f"{role} {count}" for role, count in sorted(info["components"].items()))
    lines = [
        f"file:     {safe_text(info['file'])} ({info['size_bytes'] / 1e6:.2f} MB)",
        f"format:   {info['format']} layout, written by {safe_text(info['writer'])}",
        f"type:     {info['network']}" + (" with DoRA (weight-decomposed)" if info["dora"] else ""),
        f"base:     {info['base']}",
        f"rank:     {info['rank']}" + ("" if len(info["ranks"]) == 1 else f" (per module: {info['ranks']})"),
        f"alpha:    {info['alpha']}",
        f"modules:  {info['modules']} ({comps})",
        "metadata:",
    ]
    lines += [f"  {safe_text(k)}: {safe_text(v, limit=300)}" for k, v in info["metadata"].items()]
    print("\n".join(lines))
    return 0

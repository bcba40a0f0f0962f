"""`lora-diffusion ui`: the web page for generating, training and managing LoRAs."""

from __future__ import annotations

import argparse
from .formatting import ShowDefaults


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "ui",
        help="start the web UI (generate with LoRA sliders, train from uploads, manage the LoRA library)",
        description="Start the web UI and print its URL. Local only (127.0.0.1) unless --host says otherwise.",
        formatter_class=ShowDefaults,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument("--lora-dir", default="loras", help="folder of the LoRA library (created if missing)")
    parser.add_argument("--base", default="builtin", help="default base model: builtin, a diffusers folder, a .safetensors checkpoint, or a hub id")
    parser.add_argument("--models-dir", default=None, help="folder whose diffusers folders and .safetensors checkpoints are offered as bases")
    parser.add_argument("--out", default=None, help="folder for generated PNGs (default: outputs next to the LoRA folder)")
    parser.add_argument("--auth", default=None, metavar="USER:PASSWORD", help="require this login")
    parser.add_argument("--dtype", default="auto", help="generation precision: auto (fp16 on CUDA GPUs, fp32 on the CPU), fp16, bf16 or fp32")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--data-dir", default=None,
                        help="folder whose subfolders the page may train on when others can reach the UI")
    parser.add_argument("--allow-any-path", action="store_true",
                        help="let the page name any base or folder on the server even when others can reach it")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..ui.app import launch

    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a port number (1-65535)")
    launch(args.lora_dir, base=args.base, host=args.host, port=args.port, auth=args.auth,
           models_dir=args.models_dir, out_dir=args.out, share=args.share, dtype=args.dtype,
           data_dir=args.data_dir, allow_any_path=args.allow_any_path)
    return 0

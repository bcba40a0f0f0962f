"""`lora-diffusion train [CONFIG.yaml] --data DIR --output FILE.safetensors ...`"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..training.config import CHOICES, TrainConfig, apply_values, flag_kinds, help_for, load_yaml, parse_set

# the contract's short spellings of some keys
ALIASES = {"output": ["--output", "-o"]}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train a LoRA from a folder of images",
        description="Train one LoRA. Settings come from CONFIG.yaml, then flags, then --set key=value.",
    )
    parser.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="YAML file of settings (keys as below, with _)")
    for key, kind in flag_kinds().items():
        flags = ALIASES.get(key, [f"--{key.replace('_', '-')}"])
        if kind is bool:
            parser.add_argument(*flags, dest=key, action=argparse.BooleanOptionalAction, default=None, help=help_for(key))
        elif kind is list:
            parser.add_argument(*flags, dest=key, action="append", default=None, metavar="TEXT", help=help_for(key) + " (repeatable)")
        else:
            parser.add_argument(*flags, dest=key, default=None, metavar=key.upper() if key not in CHOICES else None,
                                help=help_for(key))
    parser.add_argument("--set", dest="set_values", action="append", default=[], metavar="KEY=VALUE", help="set any key")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    config = TrainConfig()
    if args.config:
        apply_values(config, load_yaml(args.config), f"config {args.config}")
    flags = {k: getattr(args, k) for k in flag_kinds() if getattr(args, k, None) is not None}
    apply_values(config, flags, "command line")
    apply_values(config, parse_set(args.set_values), "--set")
    return config.validate()


def run(args: argparse.Namespace) -> int:
    from ..training.trainer import train
    from .outputs import replaced_note

    from accelerate import PartialState

    config = config_from_args(args)
    existed = bool(config.output) and Path(config.output).is_file()
    result = train(config, progress=not args.quiet)
    if not PartialState().is_main_process:
        return 0
    resumed = (f" ({result.steps - result.start_step} in this run, resumed at step {result.start_step})"
               if result.start_step else "")
    print(f"wrote {result.output} after {result.steps} steps{resumed} in {result.seconds:.0f} s"
          + (f" (first step {result.first_step_s:.1f} s after start)" if result.first_step_s is not None else "")
          + (f", peak GPU memory {result.peak_gib:.2f} GiB" if result.peak_gib is not None else "")
          + (f" ({len(result.skipped)} files skipped)" if result.skipped else "")
          + (f" ({result.skipped_steps} updates skipped for NaN/inf)" if result.skipped_steps else "")
          + replaced_note(result.output, existed))
    if result.skipped:
        reasons: dict[str, int] = {}
        for _, why in result.skipped:
            reasons[why] = reasons.get(why, 0) + 1
        print("skipped files: " + "; ".join(f"{n}x {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])))
    if result.removed_partials:
        print(f"removed {len(result.removed_partials)} partial LoRA(s) of the interrupted run(s): "
              + ", ".join(p.name for p in result.removed_partials))
    if result.checkpoints is not None:
        size = sum(f.stat().st_size for f in result.checkpoints.rglob("*") if f.is_file())
        print(f"checkpoints kept in {result.checkpoints} ({size / 1e6:.1f} MB): continue this run with more steps "
              "through --resume latest, or delete the folder")
    sys.stdout.flush()
    return 0

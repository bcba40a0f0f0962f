"""`lora-diffusion` entry point: subcommands, and errors as one clear line."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from typing import Callable, Sequence

from .. import __version__
from ..errors import UserError
from ..startup import mark_process_start, skip_unused_imports, warm_gpu_in_background
from .signals import handle_termination, interrupted_exit_code
from . import bake_cmd, caption_cmd, convert_cmd, extract_cmd, generate_cmd, grid_cmd, inspect_cmd, merge_cmd, quickstart_cmd, resize_cmd, train_cmd, ui_cmd

# each subcommand module provides add_parser(subparsers) -> parser whose default `run` is set
COMMANDS = [train_cmd, generate_cmd, grid_cmd, ui_cmd, inspect_cmd, convert_cmd, merge_cmd, bake_cmd, extract_cmd, resize_cmd,
            quickstart_cmd, caption_cmd]


class OneLineParser(argparse.ArgumentParser):
    """argparse with the CLI contract's errors: one line naming the command, then exit 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {self.prog}: {message}; see '{self.prog} --help'", file=sys.stderr)
        sys.exit(2)


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="lora-diffusion",
        description="Train LoRA adapters for text-to-image diffusion models and blend them by weight.",
    )
    parser.add_argument("--version", action="version", version=f"lora-diffusion {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full Python tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = {}
    for command in COMMANDS:
        sub = command.add_parser(subparsers)
        # --debug is accepted after the subcommand too (`lora-diffusion inspect F --debug`)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        parser.commands[sub.prog.split()[-1]] = sub
    return parser


def _unknown_arguments(parser: OneLineParser, command: str | None, extras: list[str]) -> None:
    """One error line for arguments no parser took, naming the closest flag of the command."""
    sub = parser.commands.get(command, parser)
    first = extras[0]
    if first.startswith("-"):
        flag = first.split("=", 1)[0]
        known = [o for action in sub._actions for o in action.option_strings if o.startswith("--")]
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        sub.error(f"unknown flag {flag}{hint}")
    sub.error(f"unexpected argument {first!r}")


def _quiet_libraries() -> None:
    # Library chatter (torchvision hints, telemetry notices) is noise on a CLI.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        _unknown_arguments(parser, args.command, extras)
    if not args.command:
        parser.print_help()
        return 2
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return int(run(args) or 0)
    except UserError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(str(interrupt) or "interrupted", file=sys.stderr)
        return interrupted_exit_code()
    except Exception as error:  # noqa: BLE001 - the contract is one line, never a traceback
        if args.debug:
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(
            f"error: unexpected {type(error).__name__}: {first} (rerun with --debug for the full traceback)",
            file=sys.stderr,
        )
        return 1


# commands whose first seconds are spent waiting for the GPU's libraries as well as for imports
GPU_COMMANDS = ("train", "quickstart", "generate", "grid")


def entry_point() -> None:
    """The console script: a real process, so its start-up levers may act on the whole interpreter."""
    # in-process callers (tests, notebooks) go through main() and keep their interpreter as it is
    mark_process_start()
    handle_termination()
    skip_unused_imports()
    if next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None) in GPU_COMMANDS:
        warm_gpu_in_background()
    sys.exit(main())


if __name__ == "__main__":
    entry_point()

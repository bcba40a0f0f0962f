"""Resolve a BASE argument (builtin, folder, single file, hub id) to a diffusers pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import UserError
from .builtin import builtin_path

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def describe_base(base: str) -> str:
    """What kind of BASE this is: builtin, folder, single-file, pickle or hub."""
    if base in ("builtin", "", None):
        return "builtin"
    path = Path(base)
    if path.is_dir():
        return "folder"
    if path.suffix.lower() == ".safetensors":
        return "single-file"
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return "pickle"
    if path.exists():
        raise UserError(f"base {base}: unsupported file type; use a diffusers folder, a .safetensors checkpoint, or 'builtin'")
    if os.sep in base.strip("/") and base.count("/") > 1 or base.startswith((".", "/", "~")):
        raise UserError(f"base {base}: no such file or folder; check the path, or use --base builtin")
    return "hub"


def load_pipeline(base: str = "builtin", *, dtype: torch.dtype = torch.float32, device: str | None = None,
                  allow_pickle: bool = False):
    """A StableDiffusionPipeline (or SDXL pipeline) for BASE, offline unless BASE is a hub id.

    Pickle checkpoints (.ckpt/.pt/.bin) are refused unless ``allow_pickle``; then they are read
    with ``torch.load(weights_only=True)``, which runs no code from the file.
    """
    from diffusers import DiffusionPipeline

    import warnings

    # torch_dtype works on every diffusers version we support; newer ones warn it is renamed
    warnings.filterwarnings("ignore", message=".*torch_dtype.*")
    _quiet_loading()
    kind = describe_base(base)
    if kind == "pickle" and not allow_pickle:
        raise UserError(
            f"base {base} is a pickle checkpoint, which can run code when loaded; "
            "convert it to .safetensors, or pass --allow-pickle to read it with torch.load(weights_only=True)"
        )
    try:
        if kind == "builtin":
            pipe = DiffusionPipeline.from_pretrained(str(builtin_path()), torch_dtype=dtype, local_files_only=True)
        elif kind == "folder":
            if not (Path(base) / "model_index.json").is_file():
                raise UserError(f"base folder {base} has no model_index.json; point --base at a diffusers pipeline folder")
            pipe = DiffusionPipeline.from_pretrained(base, torch_dtype=dtype, local_files_only=True)
        elif kind in ("single-file", "pickle"):
            from .single_file import load_single_file

            pipe = load_single_file(base, dtype=dtype, allow_pickle=allow_pickle)
        else:
            pipe = DiffusionPipeline.from_pretrained(base, torch_dtype=dtype)
    except UserError:
        raise
    except OSError as error:
        if kind == "hub":
            raise UserError(
                f"base {base}: could not load it from the Hugging Face hub ({str(error).splitlines()[0][:160]}); "
                "with no network, use a local folder, a .safetensors file, or --base builtin"
            ) from None
        raise UserError(f"base {base}: could not be loaded ({str(error).splitlines()[0][:200]})") from None
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None
    if device:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _quiet_loading() -> None:
    """No per-component progress bars while loading: a CLI prints its own progress."""
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    except ImportError:
        pass

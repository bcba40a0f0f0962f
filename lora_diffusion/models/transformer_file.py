"""A DiT family's single-file transformer (``flux1-dev.safetensors``, ``sd3.5_large.safetensors``) read with the
other components — text encoders, tokenizers, VAE, scheduler — from the diffusers folder the file sits in: the
layout of the official repositories, which ship both. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from ..errors import UserError


def components_folder(path: Path, label: str) -> Path:
    """The diffusers folder that supplies everything but the transformer: the one the file sits in."""
    folder = path.parent
    if not (folder / "model_index.json").is_file() or not (folder / "transformer" / "config.json").is_file():
        raise UserError(f"base {path}: a {label} transformer on its own; its text encoders, tokenizers and VAE come "
                        f"from the diffusers folder it sits in (model_index.json beside it, as in the official "
                        f"repositories), and {folder} is not one: put the file in the model's diffusers folder, or "
                        f"use the folder as --base")
    return folder


def folder_configs(path: Path, label: str) -> dict:
    """The component configs of the folder the file sits in (what the plan and the UI read without weights)."""
    from .base_configs import read_base_configs

    return read_base_configs(str(components_folder(path, label)))


def pipeline_with_transformer(path: Path, label: str, dtype: torch.dtype,
                              load_transformer: Callable[[Path, dict, Path, torch.dtype], torch.nn.Module]):
    """The folder's pipeline with the transformer of ``path`` (``load_transformer(path, its config, folder,
    dtype)``) in place of its own, which is never loaded."""
    from diffusers import DiffusionPipeline

    folder = components_folder(path, label)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    transformer = load_transformer(path, config, folder, dtype)
    return DiffusionPipeline.from_pretrained(str(folder), transformer=transformer, torch_dtype=dtype,
                                             local_files_only=True)

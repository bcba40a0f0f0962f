"""A base's component configs read without loading any weight: enough to name its family and derive a training
plan (the UI shows the plan before a run starts). Diffusers folders (and the built-in base) give their JSON files;
single-file checkpoints their safetensors header (our embedded configs, or the reference ones of the architecture
their tensor names show). Hub ids and pickle files give None: their facts come when the base loads."""

from __future__ import annotations

import json
from pathlib import Path

from .loading import describe_base

COMPONENT_FILES = {"unet": "unet/config.json", "transformer": "transformer/config.json", "vae": "vae/config.json",
                   "scheduler": "scheduler/scheduler_config.json"}


def read_base_configs(base: str) -> dict[str, dict] | None:
    """component -> config (``unet`` or ``transformer``, ``vae``, ``scheduler``, and ``text_encoder_2`` when the base
    has one), or None when only loading the base can tell."""
    kind = describe_base(base)
    if kind in ("builtin", "folder"):
        from .builtin import builtin_path

        return _folder_configs(builtin_path() if kind == "builtin" else Path(base))
    if kind == "single-file":
        return _single_file_configs(Path(base))
    return None


def _folder_configs(folder: Path) -> dict[str, dict] | None:
    index = folder / "model_index.json"
    if not index.is_file():
        return None
    try:
        configs = {name: json.loads((folder / file).read_text()) for name, file in COMPONENT_FILES.items()
                   if (folder / file).is_file()}
        entries = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(entries.get("text_encoder_2"), list) and entries["text_encoder_2"][0]:
        configs["text_encoder_2"] = {}
    return configs


def _single_file_configs(path: Path) -> dict[str, dict] | None:
    from safetensors import SafetensorError, safe_open

    from .original_layout import checkpoint_architecture
    from .reference_configs import ARCHITECTURES
    from .single_file import CONFIG_KEY, reference_configs, unsupported_checkpoint

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys, metadata = list(handle.keys()), dict(handle.metadata() or {})
    except (SafetensorError, OSError):
        return None
    arch = checkpoint_architecture(keys)
    if arch is None:
        return None
    if arch not in ARCHITECTURES:
        from ..families import get

        reader = get(arch).single_file_configs
        if reader is None:
            raise unsupported_checkpoint(path, arch)
        return reader(path)
    try:
        return json.loads(metadata[CONFIG_KEY]) if CONFIG_KEY in metadata else reference_configs(arch)
    except json.JSONDecodeError:
        return reference_configs(arch)

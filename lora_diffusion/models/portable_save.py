"""Pipeline folders that load the same under every transformers release we support.

transformers 5 saves a ``CLIPTextModel`` without its ``text_model.`` key prefix; transformers 4.x then finds none
of the weights and silently starts a random text encoder (the built-in base drew 17% of its captions' colours
instead of 95%). Both load the classic prefixed layout — the one every SD checkpoint on the hub uses — so that is
the layout we write.
"""

from __future__ import annotations

import json
from pathlib import Path

PREFIX = "text_model."


def prefix_clip_text_weights(folder: Path) -> list[Path]:
    """Rewrite each ``CLIPTextModel`` weight file under a pipeline folder in the prefixed layout; return those changed."""
    from safetensors.torch import load_file, save_file

    changed = []
    for config_path in sorted(Path(folder).glob("*/config.json")):
        config = json.loads(config_path.read_text())
        if config.get("architectures") != ["CLIPTextModel"]:
            continue
        for weights in sorted(config_path.parent.glob("*.safetensors")):
            tensors = load_file(str(weights))
            if all(k.startswith(PREFIX) for k in tensors):
                continue
            tensors = {k if k.startswith(PREFIX) else PREFIX + k: v for k, v in tensors.items()}
            save_file(tensors, str(weights), metadata={"format": "pt"})
            changed.append(weights)
    return changed


def save_pipeline(pipe, folder: Path) -> None:
    """``save_pretrained`` (safetensors), then the text encoders in the layout every transformers release loads."""
    pipe.save_pretrained(str(folder), safe_serialization=True)
    prefix_clip_text_weights(Path(folder))

"""The metadata written into a trained adapter file: kohya's ``ss_*`` keys (A1111, ComfyUI and Civitai read them)
and ours (the training settings, the dataset summary, the plan, the loss curve)."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from .. import __version__
from .config import TrainConfig, to_dict


def shareable_settings(cfg: TrainConfig) -> dict:
    """The training settings as written into a file: no absolute paths from the user's machine unless asked."""
    settings = to_dict(cfg)
    if cfg.record_paths:
        return settings
    settings["data"] = Path(cfg.data).name
    for key in ("output", "checkpoint_dir", "log_dir", "resume"):
        settings[key] = Path(settings[key]).name if settings[key] else ""
    if os.path.isabs(cfg.base) or os.sep in cfg.base:
        settings["base"] = Path(cfg.base).name
    return settings


def adapter_metadata(cfg: TrainConfig, plan, data, path: Path, steps: int, started: float,
                     curve: list[tuple[int, float]] = ()) -> dict:
    """Everything but the tensors of the file at ``path`` after ``steps`` steps of a run started at ``started``."""
    summary = data.summary.as_metadata() | {"skipped": len(data.skipped)}
    metadata = {
        "lora_diffusion.training": shareable_settings(cfg),
        "lora_diffusion.dataset": summary,
        "lora_diffusion.plan": plan.as_metadata(),
        "ss_steps": steps,
        "ss_num_train_images": data.summary.examples,
        "ss_learning_rate": cfg.lr,
        "ss_text_encoder_lr": cfg.text_encoder_lr if cfg.train_text_encoder else 0,
        "ss_resolution": f"({cfg.resolution}, {cfg.resolution})",
        "ss_seed": cfg.seed,
        "ss_output_name": path.stem,
        "ss_training_finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ss_training_time_s": round(time.time() - started, 1),
        "ss_network_train_unet_only": str(not cfg.train_text_encoder),
        "lora_diffusion.trainer": f"lora-diffusion {__version__}",
    }
    captions = list({example.path: example.caption for example in data.items}.values())  # each image once
    metadata["ss_tag_frequency"] = {Path(cfg.data).name or "data": tag_frequency(captions)}
    # always written, even empty: a reader then knows the captions were looked at (their whole sentences in
    # ss_tag_frequency are not trigger words)
    metadata["lora_diffusion.trigger_words"] = [cfg.trigger_word] if cfg.trigger_word else shared_words(captions)
    if curve:  # the Library shows it beside the LoRA, wherever the file goes
        metadata["lora_diffusion.loss_curve"] = [list(point) for point in curve]
    return metadata


MAX_TAGS = 1000


def tag_frequency(captions: list[str]) -> dict[str, int]:
    """kohya's ``ss_tag_frequency`` for one folder: each comma-separated caption part and how many captions hold
    it (at most ``MAX_TAGS``, the most frequent)."""
    counts: dict[str, int] = {}
    for text in captions:
        for tag in {part.strip() for part in text.split(",") if part.strip()}:
            counts[tag] = counts.get(tag, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_TAGS])


COMMON_TOKEN_IDS = 20000  # CLIP's BPE ids rank tokens by frequency: below this, an everyday word ("background")


@lru_cache(maxsize=1)
def _clip_vocabulary() -> dict[str, int]:
    import json

    from ..models.builtin import builtin_path

    try:
        return json.loads((builtin_path() / "tokenizer" / "vocab.json").read_text())
    except (OSError, ValueError):
        return {}


def _rare(word: str) -> bool:
    """A made-up or rare word (a trigger such as "mystyle" or "sks"): not an everyday whole word of CLIP's
    vocabulary."""
    return _clip_vocabulary().get(f"{word}</w>", COMMON_TOKEN_IDS) >= COMMON_TOKEN_IDS


def shared_words(captions: list[str], share: float = 0.9, limit: int = 3) -> list[str]:
    """The rare words nearly every caption holds (``share`` of them), in the order the first caption has them: a
    style's trigger ("in mystyle") when the user gave no ``--trigger-word``. Everyday words all captions share
    ("background") are scene words, not triggers. None for fewer than two captions."""
    if len(captions) < 2:
        return []
    words = [[w.strip(".,;:!?()\"'").lower() for w in text.split()] for text in captions]
    counts: dict[str, int] = {}
    for caption_words in words:
        for word in set(caption_words):
            counts[word] = counts.get(word, 0) + 1
    needed = share * len(captions)
    shared = [w for w in dict.fromkeys(words[0])
              if w and counts.get(w, 0) >= needed and _rare(w)]
    return shared[:limit]

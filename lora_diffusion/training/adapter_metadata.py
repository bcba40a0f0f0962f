"""The metadata written into a trained adapter file: kohya's ``ss_*`` keys (A1111, ComfyUI and Civitai read them)
and ours (the training settings, the dataset summary, the plan, the loss curve)."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
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
    if cfg.trigger_word:
        metadata["lora_diffusion.trigger_words"] = [cfg.trigger_word]
    if curve:  # the Library shows it beside the LoRA, wherever the file goes
        metadata["lora_diffusion.loss_curve"] = [list(point) for point in curve]
    return metadata

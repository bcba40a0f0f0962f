"""Resumable training state: one folder per checkpoint, written atomically.

``checkpoint-000300/`` holds ``lora.safetensors`` (the adapter weights in fp32),
``optimizer.pt`` (optimizer and LR-scheduler state, our own file, read back with
``torch.load(weights_only=True)``), ``trainer.json`` (step, settings and the loss curve so far, which a
resumed run's adapter file continues) and, with ``--ema-decay``, ``ema.safetensors`` (the weights' average).
Data order and noise are functions of (seed, step), so no RNG state is needed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..file_modes import make_like_new_file
from ..safe_write import atomic_write

PREFIX = "checkpoint-"


def lora_state(models: dict) -> dict[str, torch.Tensor]:
    state = {}
    for role, model in models.items():
        for name, p in model.named_parameters():
            if p.requires_grad:
                state[f"{role}.{name}"] = p.detach().float().cpu().contiguous()
    return state


def save_checkpoint(folder: Path, step: int, models: dict, optimizer, lr_scheduler, settings: dict, keep: int,
                    curve: list | None = None, ema: dict[str, torch.Tensor] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step:06d}"
    try:
        with atomic_write(final) as tmp:
            tmp.mkdir()
            save_file(lora_state(models), str(tmp / "lora.safetensors"))
            make_like_new_file(tmp / "lora.safetensors")
            if ema is not None:  # the average the files are written from (--ema-decay)
                save_file(ema, str(tmp / "ema.safetensors"))
            torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict()}, tmp / "optimizer.pt")
            (tmp / "trainer.json").write_text(json.dumps({"step": step, "settings": settings,
                                                          "loss_curve": [list(p) for p in curve or []]}, indent=2))
    except OSError as error:
        raise UserError(
            f"could not write checkpoint {final} ({error.strerror or error}); earlier checkpoints are unchanged. "
            "Free disk space and continue with --resume latest"
        ) from None
    for old in sorted(folder.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(resume: str, folder: Path) -> Path | None:
    """The checkpoint to resume from: ``latest`` in ``folder`` (None if there is none yet) or a given folder."""
    if resume == "latest":
        found = sorted(p for p in folder.glob(f"{PREFIX}*") if (p / "trainer.json").is_file()) if folder.is_dir() else []
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer.json").is_file():
        raise UserError(f"--resume {resume}: not a checkpoint folder (no trainer.json); use 'latest' or a {PREFIX}N folder")
    return path


# settings that change what the remaining steps compute; a resume with other values is warned about
RESUME_KEYS = ("base", "resolution", "batch_size", "gradient_accumulation", "rank", "alpha", "lr", "text_encoder_lr",
               "lr_scheduler", "lr_warmup_steps", "steps", "min_snr_gamma", "noise_offset", "caption_dropout",
               "mixed_precision", "seed", "targets", "train_text_encoder")


def changed_settings(path: Path, settings: dict) -> list[str]:
    """``key old → new`` for each of ``RESUME_KEYS`` that differs from the checkpoint's own settings."""
    saved = json.loads((path / "trainer.json").read_text()).get("settings", {})
    return [f"{key} {saved[key]} → {settings.get(key)}" for key in RESUME_KEYS
            if key in saved and saved[key] != settings.get(key)]


def load_checkpoint(path: Path, models: dict, optimizer, lr_scheduler, ema=None) -> int:
    """Restore adapter weights, optimizer, scheduler and (when the run keeps one) the weights' average; returns the
    step to continue from."""
    state = load_file(str(path / "lora.safetensors"))
    params = {f"{role}.{name}": p for role, model in models.items() for name, p in model.named_parameters() if p.requires_grad}
    if set(state) != set(params):
        raise UserError(f"checkpoint {path} does not match this run's LoRA (rank, targets or text-encoder setting differ)")
    with torch.no_grad():
        for key, p in params.items():
            p.copy_(state[key].to(p.dtype))
    extra = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(extra["optimizer"])
    lr_scheduler.load_state_dict(extra["lr_scheduler"])
    if ema is not None:
        if not (path / "ema.safetensors").is_file():
            raise UserError(f"checkpoint {path} was made without --ema-decay; resume without it, or start a new run")
        try:
            ema.load(load_file(str(path / "ema.safetensors")))
        except ValueError as error:
            raise UserError(f"checkpoint {path}: {error}; resume with the settings it was made with") from None
    return int(json.loads((path / "trainer.json").read_text())["step"])


def checkpoint_curve(path: Path) -> list[tuple[int, float]]:
    """The (step, loss) curve up to the checkpoint (empty for checkpoints written before curves were kept)."""
    points = json.loads((path / "trainer.json").read_text()).get("loss_curve") or []
    return [(int(step), float(loss)) for step, loss in points]

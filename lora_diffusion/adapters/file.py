"""Adapter files: ``.safetensors`` in any common LoRA layout in, ``AdapterFile`` out, and back.

Modules are always keyed by kohya/A1111 names in memory; ``formats/`` holds one module per
layout (kohya, LyCORIS, diffusers/PEFT). Pure data: nothing here touches a model.
``apply.py`` maps files onto networks.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import UserError
from ..file_modes import make_like_new_file
from ..safe_write import atomic_write
from ..families import family_from_kohya_version, family_of_text_width, get
from .flux_layout import BFL, is_flux
from .formats import METADATA_KEY, WRITE_LAYOUTS, detect_layout, parse, serialize
from .formats.aliases import to_kohya_names
from .modules import ModuleDelta, ModuleLora, ModuleLycoris
from .naming import component_of
from .paths import checked_adapter_path
from .sd3_layout import MMDIT, is_mmdit

ORIGINAL_LAYOUTS = (BFL, MMDIT)  # DiT families whose kohya-layout files use the model's original (fused) names
SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
META_PREFIX = "lora_diffusion."


@dataclass
class AdapterFile:
    """An adapter as read from or about to be written to disk."""

    modules: dict[str, ModuleDelta]
    metadata: dict[str, str] = field(default_factory=dict)
    layout: str = "kohya"  # the layout it was read in: kohya, diffusers or peft

    @property
    def rank(self) -> int:
        """The most common rank over modules (files resized dynamically vary)."""
        ranks = Counter(m.rank for m in self.modules.values() if m.rank)
        return ranks.most_common(1)[0][0] if ranks else 0

    @property
    def alpha(self) -> float | None:
        alphas = Counter(m.alpha for m in self.modules.values() if m.rank)
        return alphas.most_common(1)[0][0] if alphas else None

    @property
    def networks(self) -> list[str]:
        """The network types present: lora, loha, lokr, full (bias-only modules are lora)."""
        return sorted({m.kind for m in self.modules.values()})

    @property
    def dora(self) -> bool:
        """True when any module is weight-decomposed (DoRA)."""
        return any(m.dora_scale is not None for m in self.modules.values())

    @property
    def components(self) -> list[str]:
        return sorted({component_of(n) or "?" for n in self.modules})

    def architecture(self) -> str:
        """sd1 / sd2 / sdxl / builtin / custom, from metadata or else from tensor shapes."""
        for key in (META_PREFIX + "base", "ss_base_model_version"):
            value = self.metadata.get(key)
            if value:
                if key.startswith(META_PREFIX):
                    return value
                family = family_from_kohya_version(value)
                if family:
                    return family.name
        return self.architecture_from_shapes()

    def architecture_from_shapes(self) -> str:
        if is_flux(self.modules):
            return "flux"
        if is_mmdit(self.modules):
            return "sd3"
        has_te2 = any(n.startswith("lora_te2_") for n in self.modules)
        for name, module in self.modules.items():
            if name.startswith("lora_unet_") and name.endswith("attn2_to_k") and module.has_weight:
                return family_of_text_width(_in_features(module), second_text_encoder=has_te2).name
        return "sdxl" if has_te2 else "custom"

    def tensor_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for m in self.modules.values() for t in m.tensors())


def _in_features(module: ModuleDelta) -> int:
    """The input width of a linear module's ΔW, from its factors' shapes alone."""
    if isinstance(module, ModuleLora):
        return int(module.down.shape[1])
    f = module.factors
    if module.kind == "loha":
        return int(f["hada_w1_b"].shape[1])
    if module.kind == "lokr":
        w1_in = f["lokr_w1"].shape[1] if "lokr_w1" in f else f["lokr_w1_b"].shape[1]
        w2_in = f["lokr_w2"].shape[1] if "lokr_w2" in f else f["lokr_w2_b"].shape[1]
        return int(w1_in * w2_in)
    return int(f["diff"].shape[1])


def _open_error(path: Path, why: str) -> UserError:
    return UserError(f"cannot read LoRA file {path}: {why}")


def read_adapter(path: str | os.PathLike) -> AdapterFile:
    """Read a LoRA ``.safetensors`` file in kohya/A1111, diffusers or PEFT layout.

    Only safetensors are read; anything else is refused before a byte is parsed.
    """
    path = checked_adapter_path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise _open_error(path, f"not a valid safetensors file ({error})") from None
    if not tensors:
        raise _open_error(path, "it holds no tensors")
    _check_values(path, tensors)
    tensors = to_kohya_names(tensors)
    layout = detect_layout(list(tensors))
    if layout == "kohya":
        modules = parse(layout, tensors, metadata, path)
        for original in ORIGINAL_LAYOUTS:  # a DiT in its original names: fused modules split into diffusers' own
            if original.is_original(modules):
                modules = original.from_original(modules, path)
        return _checked(AdapterFile(modules, metadata, "kohya"), path)
    if layout == "unknown" and any(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in tensors):
        raise _open_error(path, "it is a full model checkpoint, not a LoRA; use it as --base instead")
    if layout == "unknown":
        raise _open_error(
            path,
            f"tensor {next(iter(tensors))!r} is in none of the LoRA layouts read here "
            "(kohya lora_unet_/lora_te_, diffusers unet./text_encoder., PEFT base_model.model.)",
        )
    return _checked(AdapterFile(parse(layout, tensors, metadata, path, peft_config=_peft_config(path)), metadata, layout),
                    path)


def _check_values(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor floating point and finite, every alpha one number: a nan weight or an integer tensor would
    otherwise enter the library and give black images much later, far from the file that caused it."""
    for key, tensor in tensors.items():
        is_alpha = key.endswith("alpha")
        if is_alpha and tensor.dtype != torch.bool and not tensor.is_complex():
            tensor = tensor.float()  # some trainers store alpha as an integer tensor: a number all the same
        if not tensor.is_floating_point():
            raise _open_error(path, f"tensor {key!r} is {str(tensor.dtype).replace('torch.', '')}; "
                                    "LoRA tensors are floating point (the file is corrupt)")
        if is_alpha and tensor.numel() != 1:
            raise _open_error(path, f"tensor {key!r} has {tensor.numel()} values; an alpha is one number")
        values = tensor.float() if tensor.element_size() == 1 else tensor  # fp8: isfinite needs a wider type
        if not bool(torch.isfinite(values).all()):
            raise _open_error(path, f"tensor {key!r} holds nan or inf values; the file is corrupt")


def _checked(adapter: AdapterFile, path: Path) -> AdapterFile:
    """Module-level facts no tensor shows alone: a positive finite alpha, a rank of at least 1."""
    for name, module in adapter.modules.items():
        if module.alpha is not None and not (math.isfinite(module.alpha) and module.alpha > 0):
            raise _open_error(path, f"module {name} has alpha {module.alpha}; alpha must be a positive number")
        if module.has_weight and isinstance(module, ModuleLora) and module.rank == 0:
            raise _open_error(path, f"module {name} has rank 0 (empty lora_down/lora_up); the file is corrupt")
    return adapter


def _peft_config(path: Path) -> dict | None:
    """PEFT's ``adapter_config.json`` saved beside ``adapter_model.safetensors`` (holds lora_alpha)."""
    config = path.with_name("adapter_config.json")
    if not config.is_file():
        return None
    try:
        value = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _open_error(path, f"its adapter_config.json cannot be read ({error}); fix or remove it") from None
    return value if isinstance(value, dict) else None


def to_state_dict(adapter: AdapterFile, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """kohya/LyCORIS-layout tensors. Alphas are fp32 scalars so non-integer alphas stay exact."""
    return serialize(adapter.modules, "kohya", dtype)[0]


def write_adapter(adapter: AdapterFile, path: str | os.PathLike, dtype: str = "fp16", layout: str = "kohya") -> Path:
    """Write ``adapter`` to ``path`` atomically (temp file, fsync, rename): a crash never leaves half a file, and
    a file already at ``path`` is kept as ``NAME.safetensors.bak`` (see ``safe_write``).

    ``layout`` is ``kohya`` (A1111, ComfyUI, kohya scripts) or ``diffusers`` (diffusers/PEFT
    names plus the alpha metadata diffusers reads, so the strength is the same everywhere).
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"output {path} must end in .safetensors; adapters are only written as safetensors")
    if dtype not in SAVE_DTYPES:
        raise UserError(f"save dtype {dtype!r} is not one of {', '.join(SAVE_DTYPES)}")
    if layout not in WRITE_LAYOUTS:
        raise UserError(f"layout {layout!r} is not one of {', '.join(WRITE_LAYOUTS)}")
    metadata = {k: str(v) for k, v in adapter.metadata.items() if k not in (METADATA_KEY, "lora_diffusion.alphas")}
    metadata.setdefault("format", "pt")
    modules = adapter.modules
    family = get(adapter.architecture())
    if layout not in family.file_layouts:
        raise UserError(f"layout {layout!r} is not written for {family.label} LoRAs yet; use "
                        f"{' or '.join(family.file_layouts)}")
    if layout == "kohya":
        modules = family.kohya_modules(modules)  # FLUX: the BFL layout ComfyUI, Forge and kohya read
    tensors, extra = serialize(modules, layout, SAVE_DTYPES[dtype], family.denoiser)
    metadata.update(extra)
    metadata[META_PREFIX + "format"] = layout
    try:
        with atomic_write(path, backup=True) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
            make_like_new_file(tmp)
    except (OSError, SafetensorError) as error:
        # safetensors reports a full disk or a read-only folder as its own error type, not OSError
        reason = getattr(error, "strerror", None) or (str(error).splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"could not write {path} ({reason}); any earlier file there is unchanged. "
            "Free disk space or choose another output"
        ) from None
    return path


def file_dtype(adapter: AdapterFile) -> str:
    """fp16 / bf16 / fp32: the dtype most of the adapter's tensors have (so conversion is lossless)."""
    names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
    for module in adapter.modules.values():
        if module.has_weight:
            return names.get(module.tensors()[0].dtype, "fp32")
    return "fp16"


__all__ = ["AdapterFile", "ModuleDelta", "ModuleLora", "ModuleLycoris", "read_adapter", "write_adapter", "file_dtype", "to_state_dict",
           "SAVE_DTYPES", "META_PREFIX"]

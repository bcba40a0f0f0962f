"""Adapter files: ``.safetensors`` in any common LoRA layout in, ``AdapterFile`` out, and back.

Modules are always keyed by kohya/A1111 names in memory; ``layouts.py`` maps the
diffusers/PEFT layouts onto them. Pure data: nothing here touches a model.
``apply.py`` maps files onto networks.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import UserError
from ..file_modes import make_like_new_file
from ..models.architecture import arch_from_cross_attention_dim, arch_from_kohya
from .layouts import METADATA_KEY, detect_layout, parse_diffusers_state_dict, to_diffusers_state_dict
from .naming import canonical_kohya_name, component_of

_KOHYA_PARTS = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha", "diff_b": "diff_b"}
SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
META_PREFIX = "lora_diffusion."
# LyCORIS tensor names we recognise but do not apply (refused, never misapplied)
_LYCORIS_SUFFIXES = ("hada_w1_a", "hada_w1_b", "lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w2_a", "lora_mid.weight")


@dataclass
class ModuleLora:
    """One module's adapter tensors. ``down`` is A, ``up`` is B (kohya naming)."""

    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    diff_b: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return 0 if self.down is None else int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """α/r, with kohya's convention that a missing alpha means α = r."""
        if not self.rank:
            return 1.0
        return (self.rank if self.alpha is None else self.alpha) / self.rank

    def set_part(self, part: str, tensor: torch.Tensor) -> None:
        """Store one tensor of the module: ``down``, ``up``, ``diff_b`` or ``alpha`` (a scalar)."""
        if part == "alpha":
            self.alpha = float(tensor.float().item())
        else:
            setattr(self, part, tensor)

    def delta(self) -> torch.Tensor:
        """(α/r)·up·down in fp32, shaped (out, in) or (out, in, kh, kw)."""
        down = self.down.float()
        up = self.up.float().flatten(1)
        product = up @ down.flatten(1)
        if down.dim() == 4:
            product = product.reshape(up.shape[0], *down.shape[1:])
        return product * self.scale


@dataclass
class AdapterFile:
    """An adapter as read from or about to be written to disk."""

    modules: dict[str, ModuleLora]
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
    def components(self) -> list[str]:
        return sorted({component_of(n) or "?" for n in self.modules})

    def architecture(self) -> str:
        """sd1 / sd2 / sdxl / builtin / custom, from metadata or else from tensor shapes."""
        for key in (META_PREFIX + "base", "ss_base_model_version"):
            value = self.metadata.get(key)
            if value:
                arch = value if key.startswith(META_PREFIX) else arch_from_kohya(value)
                if arch:
                    return arch
        return self.architecture_from_shapes()

    def architecture_from_shapes(self) -> str:
        has_te2 = any(n.startswith("lora_te2_") for n in self.modules)
        for name, module in self.modules.items():
            if name.startswith("lora_unet_") and name.endswith("attn2_to_k") and module.down is not None:
                return arch_from_cross_attention_dim(module.down.shape[1], has_te2)
        return "sdxl" if has_te2 else "custom"

    def tensor_bytes(self) -> int:
        total = 0
        for m in self.modules.values():
            for t in (m.down, m.up, m.diff_b):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total


def _open_error(path: Path, why: str) -> UserError:
    return UserError(f"cannot read LoRA file {path}: {why}")


def read_adapter(path: str | os.PathLike) -> AdapterFile:
    """Read a LoRA ``.safetensors`` file in kohya/A1111, diffusers or PEFT layout.

    Only safetensors are read; anything else is refused before a byte is parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"LoRA file not found: {path}; check the path")
    if path.suffix.lower() != ".safetensors":
        raise UserError(
            f"LoRA file {path} is not a .safetensors file; only safetensors adapters are loaded "
            "(convert pickle files with a trusted tool first)"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise _open_error(path, f"not a valid safetensors file ({error})") from None
    if not tensors:
        raise _open_error(path, "it holds no tensors")
    layout = detect_layout(list(tensors))
    if layout == "kohya":
        return AdapterFile(parse_kohya_state_dict(tensors, path), metadata, "kohya")
    if layout == "unknown" and any(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in tensors):
        raise _open_error(path, "it is a full model checkpoint, not a LoRA; use it as --base instead")
    if layout == "unknown":
        raise _open_error(
            path,
            f"tensor {next(iter(tensors))!r} is in none of the LoRA layouts read here "
            "(kohya lora_unet_/lora_te_, diffusers unet./text_encoder., PEFT base_model.model.)",
        )
    return AdapterFile(
        parse_diffusers_state_dict(tensors, metadata, path, peft_config=_peft_config(path)), metadata, layout
    )


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


def parse_kohya_state_dict(tensors: dict[str, torch.Tensor], source: object = "state dict") -> dict[str, ModuleLora]:
    """Group ``<module>.lora_down.weight / .lora_up.weight / .alpha / .diff_b`` by module."""
    modules: dict[str, ModuleLora] = {}
    for key, tensor in tensors.items():
        module_name, _, suffix = key.partition(".")
        module_name = canonical_kohya_name(module_name)
        if component_of(module_name) is None:
            raise UserError(
                f"{source}: tensor {key!r} is not in the kohya/A1111 LoRA layout "
                "(expected names starting lora_unet_ or lora_te_)"
            )
        if suffix.startswith(_LYCORIS_SUFFIXES) or suffix == "dora_scale":
            kind = "DoRA" if suffix == "dora_scale" else "LyCORIS (LoHa/LoKr/LoCon-Tucker)"
            raise UserError(f"{source}: {kind} adapters are not supported yet (tensor {key!r}); use a plain LoRA file")
        if suffix not in _KOHYA_PARTS:
            raise UserError(f"{source}: unknown tensor {key!r} in a LoRA file")
        modules.setdefault(module_name, ModuleLora()).set_part(_KOHYA_PARTS[suffix], tensor)
    for name, entry in modules.items():
        if (entry.down is None) != (entry.up is None):
            raise UserError(f"{source}: module {name} has only one of lora_down/lora_up; the file is incomplete")
        if entry.down is not None and entry.up.shape[1] != entry.down.shape[0]:
            raise UserError(
                f"{source}: module {name} has lora_up {tuple(entry.up.shape)} and lora_down "
                f"{tuple(entry.down.shape)} of different ranks; the file is corrupt"
            )
        if entry.down is None and entry.diff_b is None:
            raise UserError(f"{source}: module {name} has only an alpha and no weights; the file is incomplete")
    return modules


def to_state_dict(adapter: AdapterFile, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """kohya-layout tensors. Alphas are fp32 scalars so non-integer alphas stay exact."""
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(adapter.modules):
        m = adapter.modules[name]
        if m.down is not None:
            tensors[f"{name}.lora_down.weight"] = m.down.detach().to("cpu", dtype).contiguous()
            tensors[f"{name}.lora_up.weight"] = m.up.detach().to("cpu", dtype).contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(float(m.rank if m.alpha is None else m.alpha))
        if m.diff_b is not None:
            tensors[f"{name}.diff_b"] = m.diff_b.detach().to("cpu", dtype).contiguous()
    return tensors


def write_adapter(adapter: AdapterFile, path: str | os.PathLike, dtype: str = "fp16", layout: str = "kohya") -> Path:
    """Write ``adapter`` to ``path`` atomically (temp file + rename): a crash never leaves half a file.

    ``layout`` is ``kohya`` (A1111, ComfyUI, kohya scripts) or ``diffusers`` (diffusers/PEFT
    names plus the alpha metadata diffusers reads, so the strength is the same everywhere).
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"output {path} must end in .safetensors; adapters are only written as safetensors")
    if dtype not in SAVE_DTYPES:
        raise UserError(f"save dtype {dtype!r} is not one of {', '.join(SAVE_DTYPES)}")
    if layout not in ("kohya", "diffusers"):
        raise UserError(f"layout {layout!r} is not one of kohya, diffusers")
    metadata = {k: str(v) for k, v in adapter.metadata.items() if k not in (METADATA_KEY, "lora_diffusion.alphas")}
    metadata.setdefault("format", "pt")
    if layout == "kohya":
        tensors = to_state_dict(adapter, SAVE_DTYPES[dtype])
    else:
        tensors, extra = to_diffusers_state_dict(adapter.modules)
        tensors = {k: v.detach().to("cpu", SAVE_DTYPES[dtype]).contiguous() for k, v in tensors.items()}
        metadata.update(extra)
    metadata[META_PREFIX + "format"] = layout
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        make_like_new_file(tmp)
        os.replace(tmp, path)
    except OSError as error:
        raise UserError(
            f"could not write {path} ({error.strerror or error}); any earlier file there is unchanged. "
            "Free disk space or choose another output"
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def metadata_json(adapter: AdapterFile, key: str, default=None):
    """A JSON-valued metadata entry of ours, decoded (``default`` when absent or invalid)."""
    raw = adapter.metadata.get(META_PREFIX + key)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return default

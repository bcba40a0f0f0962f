"""The diffusers and PEFT layouts of LoRA files, mapped to and from our kohya-keyed modules.

Layouts read here (all become ``{kohya module name: ModuleLora}``):

* diffusers/PEFT, current: ``unet.<path>.lora_A.weight`` / ``lora_B.weight``,
  ``text_encoder[_2].<path>…``; alphas in the ``lora_adapter_metadata`` JSON
  (``unet.lora_alpha``, ``unet.alpha_pattern`` …) or, without it, α = r;
* diffusers, legacy: ``<path>.lora.down/up.weight``, ``…lora_linear_layer.down/up.weight``
  and attention-processor names (``attn1.processor.to_q_lora.down.weight``);
  per-module ``.alpha`` tensors when present;
* a bare PEFT model state dict (``base_model.model.<path>.lora_A[.<adapter>].weight``);
* DoRA: ``<path>.lora_magnitude_vector`` (PEFT) or ``….lora_magnitude_vector.weight`` (diffusers'
  kohya converter), one magnitude per output channel, kept as kohya's ``dora_scale`` (out, 1, …).

Written here: the current diffusers/PEFT layout with the metadata that keeps every
module's α (so ``load_lora_weights`` applies the same strength), plus our own
``lora_diffusion.alphas`` entry so a round trip back to kohya is exact.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import torch

from ...errors import UserError
from ..modules import ModuleLora
from ..naming import PREFIXES, component_of, kohya_name

METADATA_KEY = "lora_adapter_metadata"
# diffusers pipeline attribute <-> our component key (SDXL's first encoder is te1 in kohya files)
# (a DiT base's denoiser is diffusers' "transformer": FLUX files from diffusers, ai-toolkit and SimpleTuner)
_DIFFUSERS_PREFIX = {"unet": "unet", "transformer": "unet", "text_encoder": "te", "text_encoder_2": "te2"}
_WRITE_PREFIX = {"unet": "unet", "te": "text_encoder", "te1": "text_encoder", "te2": "text_encoder_2"}
# tensor-name ending -> which part of the module's LoRA it is
_SUFFIXES = [
    (re.compile(r"\.lora_A(\.[^.]+)?\.weight$"), "down"),
    (re.compile(r"\.lora_B(\.[^.]+)?\.weight$"), "up"),
    (re.compile(r"\.lora_B(\.[^.]+)?\.bias$"), "diff_b"),  # PEFT's lora_bias: B's bias
    (re.compile(r"\.lora(_linear_layer)?\.down\.weight$"), "down"),
    (re.compile(r"\.lora(_linear_layer)?\.up\.weight$"), "up"),
    (re.compile(r"_lora\.down\.weight$"), "down"),
    (re.compile(r"_lora\.up\.weight$"), "up"),
    (re.compile(r"\.alpha$"), "alpha"),
    (re.compile(r"\.lora_magnitude_vector(\.[^.]+)*$"), "dora_scale"),
]
_REFUSED = ("hada_", "lokr_", "lora_embedding_")


def detect_layout(keys: list[str]) -> str:
    """"kohya", "diffusers" or "peft" from tensor names; "unknown" if none fits."""
    if keys and all(component_of(k.partition(".")[0]) for k in keys):
        return "kohya"
    if any(k.startswith("base_model.model.") for k in keys):
        return "peft"
    if any(k.split(".", 1)[0] in _DIFFUSERS_PREFIX for k in keys):
        return "diffusers"
    return "unknown"


def _component(prefix: str, sdxl: bool) -> str:
    component = _DIFFUSERS_PREFIX[prefix]
    return "te1" if component == "te" and sdxl else component


def _split(key: str) -> tuple[str, str]:
    """(module path, role) for one diffusers/PEFT tensor name (prefix already removed)."""
    for pattern, role in _SUFFIXES:
        match = pattern.search(key)
        if not match:
            continue
        path = key[: match.start()]
        if pattern.pattern.startswith("_lora"):
            # attention-processor naming: attn1.processor.to_out_lora -> attn1.to_out.0
            processor = re.search(r"\.processor\.(to_q|to_k|to_v|to_out)$", path)
            if processor is None:
                break
            target = processor.group(1) + (".0" if processor.group(1) == "to_out" else "")
            path = path[: processor.start()] + "." + target
        return path, role
    raise UserError(f"tensor {key!r} is not a LoRA tensor of the diffusers/PEFT layout")


def _pattern_value(patterns: dict, path: str):
    """PEFT's rank/alpha pattern lookup: a key matches the full path or a dotted suffix of it."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return None


def parse_diffusers_state_dict(
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
    source: object = "state dict",
    *,
    peft_config: dict | None = None,
) -> dict:
    """diffusers/PEFT-layout tensors -> ``{kohya name: ModuleLora}``."""
    keys = list(tensors)
    for key in keys:
        if any(part in key for part in _REFUSED):
            raise UserError(
                f"{source}: tensor {key!r} is a LyCORIS or embedding tensor in diffusers/PEFT naming, which no "
                "diffusion tool writes; use the file in kohya/LyCORIS layout (lora_unet_…hada_w1_a)"
            )
    try:
        adapter_meta = json.loads(metadata.get(METADATA_KEY) or "{}")
    except json.JSONDecodeError:
        raise UserError(f"{source}: metadata {METADATA_KEY!r} is not valid JSON; the file is damaged") from None
    own_alphas = _own_alphas(metadata)
    sdxl = any(k.startswith("text_encoder_2.") for k in keys)
    modules: dict[str, ModuleLora] = {}
    paths: dict[str, tuple[str, str, str]] = {}
    for key, tensor in tensors.items():
        prefix = ""
        if key.startswith("base_model.model."):
            rest = key[len("base_model.model."):]
            component = "te" if rest.startswith(("text_model.", "encoder.layers.")) else "unet"
        else:
            prefix, _, rest = key.partition(".")
            if prefix not in _DIFFUSERS_PREFIX:
                raise UserError(
                    f"{source}: tensor {key!r} has no unet./text_encoder./text_encoder_2. prefix; "
                    "it is not in a LoRA layout this tool reads"
                )
            component = _component(prefix, sdxl)
        path, role = _split(rest)
        name = kohya_name(component, path)
        paths[name] = (component, path, prefix)
        modules.setdefault(name, ModuleLora()).set_part(role, tensor)  # a diff_b is scaled by alpha/r below
    for name, entry in modules.items():
        component, path, file_prefix = paths[name]
        if entry.down is None or entry.up is None:
            raise UserError(f"{source}: module {path} of {component} has only one of lora_A/lora_B; the file is incomplete")
        prefix = file_prefix or ("text_encoder" if component in ("te", "te1") else _WRITE_PREFIX[component])
        config = peft_config or {k[len(prefix) + 1:]: v for k, v in adapter_meta.items() if k.startswith(prefix + ".")}
        if name in own_alphas:
            entry.alpha = own_alphas[name]
        elif entry.alpha is None and config:
            alpha = _pattern_value(config.get("alpha_pattern") or {}, path)
            if alpha is None:
                alpha = config.get("lora_alpha")
            if alpha is not None:
                entry.alpha = float(alpha)
                if config.get("use_rslora"):
                    # rsLoRA scales by α/√r; as a plain LoRA that is alpha' = α·√r
                    entry.alpha = float(alpha) * entry.rank ** 0.5
        if entry.diff_b is not None:
            entry.diff_b = entry.diff_b * entry.scale
        if entry.dora_scale is not None:
            # PEFT shapes conv magnitudes (1, out, 1, 1) for the activations; kohya keeps (out, 1, 1, 1)
            out_dim = entry.up.shape[0]
            if entry.dora_scale.numel() != out_dim:
                raise UserError(f"{source}: module {path} of {component}: lora_magnitude_vector "
                                f"{tuple(entry.dora_scale.shape)} does not have one value per output channel "
                                f"({out_dim}); the file is corrupt")
            entry.dora_scale = entry.dora_scale.reshape(out_dim, *[1] * (entry.down.dim() - 1))
    return modules


def _own_alphas(metadata: dict[str, str]) -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads(metadata.get("lora_diffusion.alphas") or "{}").items()}
    except (json.JSONDecodeError, TypeError, ValueError):
        return {}


# ---- writing ------------------------------------------------------------------------------
# name segments that contain underscores, so a kohya name can be split back into a module path
_SEGMENTS = sorted(
    {
        "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
        "proj_in", "proj_out", "conv_in", "conv_out", "conv_shortcut", "time_emb_proj", "time_embedding",
        "linear_1", "linear_2", "add_embedding", "text_model", "self_attn", "q_proj", "k_proj", "v_proj",
        "out_proj", "text_projection", "final_layer_norm", "layer_norm1", "layer_norm2", "conv_norm_out",
        "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "time_proj", "encoder_hid_proj",
        "class_embedding", "token_embedding", "position_embedding",
        # DiT transformers (FLUX.1, SD3)
        "single_transformer_blocks", "ff_context", "norm1_context", "proj_mlp",
    },
    key=lambda s: -s.count("_"),
)


def module_path(kohya: str) -> tuple[str, str]:
    """(component, module path) for a kohya module name: the inverse of ``kohya_name``."""
    component = component_of(kohya)
    if component is None:
        raise UserError(f"{kohya!r} is not a kohya module name")
    tokens = kohya[len(PREFIXES[component]):].split("_")
    parts: list[str] = []
    i = 0
    while i < len(tokens):
        for segment in _SEGMENTS:
            width = segment.count("_") + 1
            if "_".join(tokens[i:i + width]) == segment:
                parts.append(segment)
                i += width
                break
        else:
            parts.append(tokens[i])
            i += 1
    return component, ".".join(parts)


def _pattern(path: str) -> str:
    return re.escape(path.removeprefix("text_model."))


def _leaf(path: str) -> str:
    """The module's own name as PEFT targets it: ``to_q``, or ``to_out.0`` for indexed ones."""
    parts = path.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


def to_diffusers_state_dict(modules: dict, denoiser: str = "unet") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) in the current diffusers/PEFT layout, meaning what the kohya modules mean; ``denoiser``
    is the pipeline attribute the ``lora_unet_`` modules belong to (``transformer`` for DiT bases)."""
    tensors: dict[str, torch.Tensor] = {}
    per_component: dict[str, dict[str, tuple[int, float]]] = {}
    alphas: dict[str, float] = {}
    dora: set[str] = set()
    for name in sorted(modules):
        m = modules[name]
        component, path = module_path(name)
        if m.kind != "lora" or getattr(m, "mid", None) is not None:
            raise UserError(f"module {name} is a {m.kind if m.kind != 'lora' else 'Tucker LoCon'} module, which the "
                            "diffusers layout cannot hold (diffusers loads plain LoRA and DoRA); keep kohya layout")
        if m.down is None:
            raise UserError(f"module {name} has only a bias delta, which the diffusers layout cannot hold; keep kohya layout")
        if m.diff_b is not None:
            raise UserError(f"module {name} has a bias delta, which diffusers' loader ignores; keep kohya layout")
        prefix = denoiser if component == "unet" else _WRITE_PREFIX[component]
        tensors[f"{prefix}.{path}.lora_A.weight"] = m.down
        tensors[f"{prefix}.{path}.lora_B.weight"] = m.up
        if m.dora_scale is not None:
            if m.dora_scale.numel() != m.up.shape[0]:
                raise UserError(f"module {name} has a per-input-column dora_scale (an older LyCORIS DoRA), which "
                                "diffusers/PEFT cannot hold; keep kohya layout")
            magnitude = m.dora_scale.reshape(-1)
            if m.down.dim() == 4:
                magnitude = magnitude.reshape(1, -1, 1, 1)  # PEFT's conv magnitude shape
            tensors[f"{prefix}.{path}.lora_magnitude_vector"] = magnitude
            dora.add(prefix)
        alpha = float(m.rank if m.alpha is None else m.alpha)
        per_component.setdefault(prefix, {})[path] = (m.rank, alpha)
        alphas[name] = alpha
    adapter_meta: dict[str, object] = {}
    for prefix, entries in per_component.items():
        rank, _ = Counter(r for r, _ in entries.values()).most_common(1)[0]
        alpha, _ = Counter(a for _, a in entries.values()).most_common(1)[0]
        adapter_meta[f"{prefix}.r"] = rank
        adapter_meta[f"{prefix}.lora_alpha"] = alpha
        # PEFT matches patterns and targets as dotted suffixes of module names; leaving out
        # "text_model." keeps them valid for transformers 4 and 5 module trees alike
        adapter_meta[f"{prefix}.rank_pattern"] = {_pattern(p): r for p, (r, _) in entries.items() if r != rank}
        adapter_meta[f"{prefix}.alpha_pattern"] = {_pattern(p): a for p, (_, a) in entries.items() if a != alpha}
        adapter_meta[f"{prefix}.target_modules"] = sorted({_leaf(p) for p in entries})
        adapter_meta[f"{prefix}.init_lora_weights"] = True
        if prefix in dora:
            adapter_meta[f"{prefix}.use_dora"] = True
    metadata = {
        METADATA_KEY: json.dumps(adapter_meta, sort_keys=True),
        "lora_diffusion.alphas": json.dumps(alphas, sort_keys=True),
    }
    return tensors, metadata

"""Which modules get LoRA: named presets and glob patterns over module paths."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable, Mapping, Sequence

_UNET_ATTN = [
    f"*transformer_blocks.*.{attn}.{proj}"
    for attn in ("attn1", "attn2")
    for proj in ("to_q", "to_k", "to_v", "to_out.0")
]
_UNET_FF = [
    "*transformer_blocks.*.ff.net.0.proj",
    "*transformer_blocks.*.ff.net.2",
    "*attentions.*.proj_in",
    "*attentions.*.proj_out",
]
_UNET_CONV = [
    "*resnets.*.conv1",
    "*resnets.*.conv2",
    "*resnets.*.conv_shortcut",
    "*downsamplers.*.conv",
    "*upsamplers.*.conv",
]
_TEXT_ATTN = [f"*self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
_TEXT_MLP = ["*mlp.fc1", "*mlp.fc2"]

UNET_PRESETS: dict[str, list[str]] = {
    # the default, and what kohya's networks.lora / diffusers' example train
    "attn": _UNET_ATTN,
    "attn-ff": _UNET_ATTN + _UNET_FF,
    # LoCon-style: also the resnet and resampling convolutions
    "full": _UNET_ATTN + _UNET_FF + _UNET_CONV,
}
TEXT_PRESETS: dict[str, list[str]] = {
    "attn": _TEXT_ATTN,
    "attn-mlp": _TEXT_ATTN + _TEXT_MLP,
    "full": _TEXT_ATTN + _TEXT_MLP,
}
PRESETS = {"unet": UNET_PRESETS, "text": TEXT_PRESETS}


def resolve_patterns(targets: str | Sequence[str], kind: str,
                     presets: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Expand preset names (``presets``, or the defaults for ``kind`` "unet" or "text") and keep glob patterns as
    given. A base family names its denoiser's presets (``Family.target_presets``): module paths differ by family."""
    presets = PRESETS[kind] if presets is None else presets
    items = [targets] if isinstance(targets, str) else list(targets)
    patterns: list[str] = []
    for item in items:
        if item in presets:
            patterns.extend(presets[item])
        else:
            patterns.append(item)
    if not patterns:
        raise ValueError(f"no target modules given for the {kind}; use a preset ({', '.join(presets)}) or glob patterns")
    return patterns


def matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(path, p) for p in patterns)

"""kohya/A1111 module names: ``lora_unet_<path with dots as underscores>``.

Text encoders are always named by their canonical transformers path
(``text_model.encoder.layers.0.self_attn.q_proj``): transformers 5 dropped the
``text_model.`` level from ``CLIPTextModel``, and names built from the installed
module tree would be silently ignored by A1111, ComfyUI and diffusers.
"""

from __future__ import annotations

# component key -> kohya prefix; "te" for one text encoder, "te1"/"te2" for SDXL's two
PREFIXES = {"unet": "lora_unet_", "te": "lora_te_", "te1": "lora_te1_", "te2": "lora_te2_"}


def canonical_text_path(path: str) -> str:
    """The module path as transformers 4 named it inside a CLIP text model."""
    if path.startswith("text_model.") or path == "text_projection":
        return path
    return "text_model." + path


def kohya_name(component: str, path: str) -> str:
    """kohya module name for the module at ``path`` of ``component`` (unet, te, te1, te2)."""
    if component != "unet":
        path = canonical_text_path(path)
    return PREFIXES[component] + path.replace(".", "_")


def component_of(name: str) -> str | None:
    """Which component a kohya module name belongs to (longest prefix wins)."""
    for component, prefix in sorted(PREFIXES.items(), key=lambda kv: -len(kv[1])):
        if name.startswith(prefix):
            return component
    return None


def canonical_kohya_name(name: str) -> str:
    """``name`` with a text-encoder path given its ``text_model_`` level (converters built on
    transformers 5 module trees leave it out; A1111 and our model lookup expect it)."""
    component = component_of(name)
    if component is None or component == "unet":
        return name
    prefix = PREFIXES[component]
    rest = name[len(prefix):]
    if rest.startswith(("encoder_", "final_layer_norm", "embeddings_")):
        return prefix + "text_model_" + rest
    return name

"""Base-model families: one module each (``builtin``, ``sd1``, ``sd2``, ``sdxl``, and ``custom`` for the rest),
each stating in one place how it is recognised, what it is called, which text encoders it has, how captions
condition its denoiser and which training profile it uses. ``family_of`` is the one answer to "what is this
base?" that loaders, the trainer, the plan, generation and the UI ask; nothing else branches on family names.

Adding a family: a module with ``FAMILY = Family(...)``, its place in ``_ORDER`` (most specific first), its profile
in ``training/profiles/`` and its tests.
"""

from __future__ import annotations

from . import builtin, custom, flux, sd1, sd2, sd3, sdxl
from ..generation.defaults import SD_DEFAULTS, GenerationDefaults
from .family import Family

# recognisers are asked in this order: the built-in marker before the SD1 width it shares, FLUX's transformer
# and SD3's transformer configs, SDXL's own embedding
# type before widths, "custom" last (it takes anything)
_ORDER = (builtin.FAMILY, flux.FAMILY, sd3.FAMILY, sdxl.FAMILY, sd2.FAMILY, sd1.FAMILY, custom.FAMILY)
FAMILIES: dict[str, Family] = {family.name: family for family in _ORDER}
CUSTOM = custom.FAMILY


def get(name: str) -> Family:
    """The family called ``name`` (``custom`` for a name this version does not know)."""
    return FAMILIES.get(name, CUSTOM)


def family_of_config(config: dict | None, *, second_text_encoder: bool = False) -> Family:
    """The family of a denoiser config; a second text encoder beside an unrecognised UNet means SDXL."""
    config = dict(config or {})
    for family in _ORDER[:-1]:
        if family.recognises(config):
            return family
    return sdxl.FAMILY if second_text_encoder else CUSTOM


def family_of_configs(configs: dict[str, dict]) -> Family:
    """The family of a base from its component configs (``models/base_configs.py``)."""
    denoiser = configs.get("unet") or configs.get("transformer")
    return family_of_config(denoiser, second_text_encoder="text_encoder_2" in configs)


def pipeline_configs(pipe) -> dict[str, dict]:
    """A loaded pipeline's component configs, as ``models/base_configs.py`` reads them from files."""
    configs = {name: dict(getattr(pipe, name).config) for name in ("unet", "transformer", "vae", "scheduler")
               if getattr(pipe, name, None) is not None}
    if getattr(pipe, "text_encoder_2", None) is not None:
        configs["text_encoder_2"] = {}
    return configs


def native_resolution(pipe) -> int:
    """The pixel size a loaded base was trained at, as its family reads it."""
    return family_of(pipe).native_resolution(pipeline_configs(pipe))


def family_of_base(base: str) -> Family | None:
    """The family of a base as the user names it (builtin, a folder, a single file), read from its configs without
    loading weights; None when only loading it can tell (a hub id, a pickle file)."""
    from ..models.base_configs import read_base_configs

    configs = read_base_configs(base)
    return family_of_configs(configs) if configs is not None else None


def generation_defaults_of_base(base: str) -> GenerationDefaults:
    """Steps, guidance and sampler for a base as the user names it, read from its configs (the SD defaults when
    only loading it can tell)."""
    from ..models.base_configs import read_base_configs

    configs = read_base_configs(base)
    return family_of_configs(configs).generation_for(configs) if configs is not None else SD_DEFAULTS


def family_of(model) -> Family:
    """The family of a pipeline, a components dict (``unet``, ``te``/``te1``/``te2``) or a denoiser module."""
    if isinstance(model, dict):
        denoiser, second = model.get("unet"), "te2" in model
    elif hasattr(model, "components") and (hasattr(model, "unet") or hasattr(model, "transformer")):  # a pipeline
        denoiser = getattr(model, "unet", None) or getattr(model, "transformer", None)
        second = getattr(model, "text_encoder_2", None) is not None
    else:
        denoiser, second = model, False
    config = getattr(denoiser, "config", None)
    return family_of_config(dict(config) if config is not None else None, second_text_encoder=second)


def family_of_checkpoint(keys) -> Family | None:
    """The family of a single-file checkpoint from its tensor names (None: not one this version can load)."""
    keys = frozenset(keys)
    return next((family for family in _ORDER if family.checkpoint_recognises(keys)), None)


def family_from_kohya_version(version: str) -> Family | None:
    """The family an ``ss_base_model_version`` names (kohya, A1111, ComfyUI, Civitai write it), if any."""
    for family in _ORDER:
        if family.reads_kohya_version(version):
            return family
    return sdxl.FAMILY if version.startswith("sdxl") else None


def family_of_text_width(width: int, *, second_text_encoder: bool = False) -> Family:
    """The family whose cross-attention takes text ``width`` wide (what an adapter's attn2 to_k reads)."""
    if second_text_encoder:
        return sdxl.FAMILY
    return family_of_config({"cross_attention_dim": width})


__all__ = ["FAMILIES", "Family", "family_from_kohya_version", "family_of", "family_of_base", "family_of_checkpoint", "family_of_config", "family_of_configs",
           "family_of_text_width", "get", "native_resolution", "pipeline_configs"]

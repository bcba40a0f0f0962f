"""What every base family states about itself, in one place (the interface the rest of the code asks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from ..generation.defaults import SD_DEFAULTS, GenerationDefaults
from ..lora.targets import UNET_PRESETS
from .shared import ddpm_objective, unet_native_resolution


@dataclass(frozen=True)
class Family:
    """One kind of base model.

    ``recognises`` looks at a denoiser's config (a dict) and ``checkpoint_recognises`` at a single-file checkpoint's
    tensor names, and each says whether it is this family's; ``text_encoders`` maps kohya roles (``te``, or
    ``te1``/``te2``) to the pipeline attributes that hold them, in order. From a loaded pipeline, ``conditioning``
    builds the trainer's conditioning (captions → the denoiser's inputs) and ``objective`` its training objective
    (noise, timesteps or σ, prediction target, loss weighting). ``target_presets`` are the LoRA target presets over
    its denoiser's modules; ``native_resolution`` reads the pixel size the base was trained at from its component
    configs (``models/base_configs.py``: no weight needs loading); ``generation`` holds the steps, guidance and
    sampler its images are made with when the user gives none.
    """

    name: str  # what files and plans call it: sd1, sd2, sdxl, builtin, custom
    label: str  # what people call it: "SD1.x"
    kohya_version: str  # ss_base_model_version written into adapter files (A1111, ComfyUI, Civitai read it)
    kohya_aliases: tuple[str, ...] = ()  # other ss_base_model_version values that mean this family
    denoiser: str = "unet"  # the pipeline attribute LoRA trains in
    text_encoders: Mapping[str, str] = field(default_factory=lambda: {"te": "text_encoder"})
    profile: str = "sd1"  # training/profiles/<profile>.yaml
    v2: bool = False  # kohya's ss_v2 flag
    recognises: Callable[[dict], bool] = lambda config: False
    conditioning: Callable[..., object] | None = None  # (pipe, base) -> conditioning; None: cannot train
    objective: Callable[[object], object] = ddpm_objective  # pipe -> an objective with .loss(...)
    # preset name (attn, attn-ff, full) -> glob patterns over the denoiser's module paths
    target_presets: Mapping[str, Sequence[str]] = field(default_factory=lambda: UNET_PRESETS)
    checkpoint_recognises: Callable[[frozenset], bool] = lambda keys: False  # a single-file checkpoint's tensor names
    # a single file of the family's own (not SD's original) layout: (path, dtype) -> pipeline, and path -> configs;
    # None: read as an SD original-layout checkpoint, or refused
    single_file_pipeline: Callable[..., object] | None = None
    single_file_configs: Callable[[object], dict] | None = None
    upscale_warning: bool = False  # warn when training above the native size (a base that never saw larger images)
    native_resolution: Callable[[dict], int] = unet_native_resolution  # component configs -> pixels per side
    generation: GenerationDefaults = SD_DEFAULTS  # steps, CFG and sampler when the user gives none
    # component configs -> the defaults of a variant that generates differently (FLUX.1-schnell), else None
    generation_variant: Callable[[dict], GenerationDefaults | None] = lambda configs: None
    graphable: bool = True  # the trainer's CUDA-graph replay (training/cuda_graphs.py) fits its denoiser's call
    file_layouts: tuple[str, ...] = ("kohya", "diffusers")  # layouts its LoRA files are written in; the first by default
    # its modules as kohya-layout files name them (FLUX: the BFL names with q/k/v fused); default: as they are
    kohya_modules: Callable[[dict], dict] = dict

    def generation_for(self, configs: dict | None) -> GenerationDefaults:
        """The generation defaults for a base with these component configs (None: the family's own)."""
        return (self.generation_variant(configs) if configs else None) or self.generation

    def reads_kohya_version(self, version: str) -> bool:
        return version == self.kohya_version or version in self.kohya_aliases

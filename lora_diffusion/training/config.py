"""Training settings as validated data: YAML files, CLI flags and ``--set key=value`` all land here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from ..errors import UserError
from ..lora.config import INIT_CHOICES, NETWORK_CHOICES
from ..lora.targets import TEXT_PRESETS, UNET_PRESETS
from ..models.precisions import BASE_PRECISIONS
from ..data.captioner import DEFAULT_MODEL as DEFAULT_CAPTIONER
from .optimizers import OPTIMIZERS
from .trackers import CHOICES as TRACKER_CHOICES

CHOICES: dict[str, tuple[str, ...]] = {
    "mixed_precision": ("no", "fp16", "bf16"),
    "optimizer": tuple(OPTIMIZERS),
    "lr_scheduler": ("constant", "constant_with_warmup", "linear", "cosine"),
    "crop": ("center", "random"),
    "cache": ("auto", "memory", "disk", "off"),
    "targets": tuple(UNET_PRESETS),
    "text_targets": tuple(TEXT_PRESETS),
    "init": INIT_CHOICES,
    "network": NETWORK_CHOICES,
    "base_precision": BASE_PRECISIONS,
    "save_dtype": ("fp16", "bf16", "fp32"),
    "offload_encoders": ("auto", "on", "off"),
    "masked_loss": ("auto", "on", "off"),
    "log_with": TRACKER_CHOICES,
    "nan_policy": ("skip", "stop"),
    "compile_mode": ("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
    "timestep_sampling": ("auto", "uniform", "sigmoid", "logit-normal", "shift", "flux-shift"),
}


@dataclass
class TrainConfig:
    """Everything one LoRA training run needs. Each field is a YAML key and a ``--flag``."""

    dataset_config: str = field(default="", metadata={"help": "a dataset config with several subsets instead of --data: our YAML or kohya's TOML (folder/image_dir, repeats/num_repeats, trigger_word/class_tokens, caption options, flip, is_reg)"})
    prior_loss_weight: float = field(default=1.0, metadata={"help": "the loss weight of regularization (class) images: is_reg subsets and --reg-generate's images"})
    reg_generate: int = field(default=0, metadata={"help": "make this many class images of --class-prompt with the base itself (once, cached beside the data) and train on them as regularization images"})
    class_prompt: str = field(default="", metadata={"help": "the prompt of --reg-generate's class images, e.g. 'a photo of a dog'"})
    data: str = field(default="", metadata={"help": "image folder (.txt captions, N_name repeat folders, metadata.jsonl/csv) or a hub dataset id"})
    output: str = field(default="", metadata={"help": "adapter file to write (.safetensors)"})
    base: str = field(default="builtin", metadata={"help": "builtin, a diffusers folder, a .safetensors checkpoint, or a hub id"})
    allow_pickle: bool = field(default=False, metadata={"help": "allow a .ckpt/.pt/.bin base (read with torch.load(weights_only=True))"})
    steps: int | None = field(default=None, metadata={"help": "optimizer steps (derived: image passes × images / batch size)"})
    rank: int | None = field(default=None, metadata={"help": "LoRA rank r"})
    alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (scale alpha/rank)"})
    lr: float | None = field(default=None, metadata={"help": "learning rate of the UNet LoRA"})
    text_encoder_lr: float | None = field(default=None, metadata={"help": "learning rate of the text-encoder LoRA"})
    batch_size: int | None = field(default=None, metadata={"help": "images per step per process"})
    gradient_accumulation: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    resolution: int | None = field(default=None, metadata={"help": "training size in pixels (derived: the base model's native size)"})
    seed: int = field(default=0, metadata={"help": "seed for data order, noise and initialisation"})
    caption: str = field(default="", metadata={"help": "caption for images without one"})
    trigger_word: str = field(default="", metadata={"help": "word put in front of every caption"})
    auto_caption: bool = field(default=False, metadata={"help": "caption the images that have no caption first, with --caption-model (written beside them, so the next run finds them)"})
    caption_model: str = field(default=DEFAULT_CAPTIONER, metadata={"help": "the vision-language model of --auto-caption (hub id or local folder)"})
    caption_extension: str = field(default=".txt", metadata={"help": "extension of caption files"})
    caption_shuffle: bool = field(default=False, metadata={"help": "shuffle comma-separated caption tags"})
    keep_tokens: int = field(default=1, metadata={"help": "leading tags kept in place when shuffling"})
    caption_dropout: float | None = field(default=None, metadata={"help": "probability of training on an empty caption"})
    crop: str = field(default="center", metadata={"help": "center or random crop"})
    flip: bool = field(default=False, metadata={"help": "random horizontal flip"})
    bucketing: bool | None = field(default=None, metadata={"help": "aspect-ratio buckets for mixed image sizes"})
    masked_loss: str = field(default="auto", metadata={"help": "weight the loss by per-image masks: a same-name image in a masks/ folder beside the images (white counts, black is ignored): auto (when such files exist), on (also the images' alpha channels), off"})
    train_text_encoder: bool = field(default=False, metadata={"help": "also train LoRA in the text encoder"})
    targets: str | None = field(default=None, metadata={"help": "UNet target preset: attn, attn-ff or full (derived: the base's profile)"})
    block_lr: str = field(default="", metadata={"help": "block-wise learning-rate weights, BLOCK=WEIGHT,... over module path prefixes (down=0.5,mid_block=1,up_blocks.1=2; transformer_blocks.0-5=0 for index ranges; 0 leaves a block untrained, without LoRA), or a preset: out-only, in-only"})
    block_ranks: str = field(default="", metadata={"help": "block-wise ranks, BLOCK=RANK,... as --block-lr (0: no LoRA there); every module keeps the run's alpha (kohya's block_dims); the file keeps each module's rank"})
    text_targets: str = field(default="attn", metadata={"help": "text-encoder target preset"})
    init: str = field(default="kaiming", metadata={"help": "initialisation of A"})
    network: str = field(default="lora", metadata={"help": "adapter type: lora (B·A), loha or lokr (LyCORIS; saved in the layout A1111/ComfyUI load)"})
    dora: bool = field(default=False, metadata={"help": "weight-decomposed training (DoRA): a trained magnitude per output channel on top of the network"})
    lokr_factor: int = field(default=-1, metadata={"help": "LoKr: split each dimension with this factor (-1: as square as possible, as LyCORIS)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA path"})
    base_precision: str = field(default="auto", metadata={"help": "storage of the frozen base: auto (the training dtype), bf16, fp16, or quantized int8, fp8, nf4 (QLoRA-style, through torchao; Linear layers)"})
    mixed_precision: str | None = field(default=None, metadata={"help": "no, fp16 or bf16 (derived: bf16 on GPUs that have it, else fp16; no on CPU)"})
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": "trade compute for memory (derived: on for GPUs with little memory)"})
    offload_encoders: str = field(default="auto", metadata={"help": "encode all images and captions first, then move the VAE and text encoder off the GPU: auto (on CUDA when everything can be cached), on, off"})
    cpu_threads: int | None = field(default=None, metadata={"help": "torch threads for a CPU run (derived: the cores other programs leave free, counted from the threads running now; a busy machine trains far faster with fewer threads)"})
    compile: bool | None = field(default=None, metadata={"help": "torch.compile the UNet (faster steps on GPU after a compile of a minute or two; derived: on for long GPU runs)"})
    cuda_graphs: bool | None = field(default=None, metadata={"help": "replay the UNet's forward and backward as CUDA graphs: no compiler, captured in seconds (derived: on for CUDA GPUs without torch.compile, gradient accumulation, fp16 or text-encoder training)"})
    compile_mode: str | None = field(default=None, metadata={"help": "torch.compile mode: default, reduce-overhead (CUDA graphs) or max-autotune-no-cudagraphs"})
    nan_policy: str = field(default="skip", metadata={"help": "on a NaN/inf loss or gradient: skip the update (warn) or stop"})
    max_bad_steps: int = field(default=10, metadata={"help": "with nan_policy skip: stop after this many bad steps in a row"})
    ema_decay: float = field(default=0.0, metadata={"help": "keep an exponential moving average of the LoRA weights and write the files from it (e.g. 0.99 as ai-toolkit's FLUX example, 0.999 for long runs; 0: off)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: off)"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw (fused on GPU), adamw8bit (bitsandbytes), prodigy (prodigyopt; lr 1), adafactor (transformers), adamw-schedulefree (schedulefree; no lr schedule) or lion (lion-pytorch; a fifth of AdamW's lr); the lr is derived for the optimizer unless you set it"})
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay"})
    lr_scheduler: str | None = field(default=None, metadata={"help": "learning-rate schedule"})
    lr_warmup_steps: int | None = field(default=None, metadata={"help": "warm-up steps"})
    min_snr_gamma: float | None = field(default=None, metadata={"help": "min-SNR-γ loss weighting (0: off; 5 is common)"})
    noise_offset: float = field(default=0.0, metadata={"help": "noise offset (e.g. 0.05)"})
    min_timestep: int = field(default=0, metadata={"help": "train on noise levels from this timestep (kohya's --min_timestep)"})
    train_weight_min: float = field(default=1.0, metadata={"help": "each step trains the LoRA at a weight drawn from [this, 1] (1: always at full weight); below 1, weights under 1 learn to show the style too"})
    train_weight_blend: bool = field(default=False, metadata={"help": "with --train-weight-min below 1: a step at weight w is taught w of the way from the base's own prediction to the data (one more forward pass without gradients), so the style grows with the weight instead of appearing all at once"})
    timestep_sampling: str = field(default="auto", metadata={"help": "rectified-flow bases (FLUX.1, SD3): how noise levels are drawn: auto (the family's: sigmoid for FLUX, shift for SD3), uniform, sigmoid or logit-normal (a sigmoid of a normal draw: the middle levels most), shift (sigmoid, then shifted toward noise by --discrete-flow-shift), flux-shift (FLUX's resolution-dependent shift, as its pipeline samples)"})
    discrete_flow_shift: float = field(default=3.0, metadata={"help": "the shift of --timestep-sampling shift (kohya's --discrete_flow_shift)"})
    train_guidance: float = field(default=1.0, metadata={"help": "the guidance FLUX.1-dev is fed while training (1: kohya's and SimpleTuner's; diffusers' script uses 3.5); bases without a guidance input ignore it"})
    max_timestep: int = field(default=1000, metadata={"help": "train on noise levels below this timestep (kohya's --max_timestep; 1000: all)"})
    cache: str = field(default="auto", metadata={"help": "cache latents/text states: auto, memory, disk, off"})
    validation_split: float = field(default=0.0, metadata={"help": "hold out this share of the images (at least one) and log their loss, with fixed noise, every --validation-every steps: a curve that rises while the training loss falls means the LoRA is memorising its images (0: off)"})
    validation_every: int = field(default=0, metadata={"help": "steps between validation-loss evaluations (0: about 20 over the run)"})
    checkpoint_every: int = field(default=0, metadata={"help": "save a resumable checkpoint every N steps (0: none; Ctrl-C still saves one)"})
    checkpoint_dir: str = field(default="", metadata={"help": "checkpoint folder (default: next to the output)"})
    checkpoints_to_keep: int = field(default=2, metadata={"help": "keep only the newest N checkpoints"})
    save_every: int = field(default=0, metadata={"help": "write an intermediate adapter every N steps"})
    sample_every: int = field(default=0, metadata={"help": "validation grid every N steps (0: off)"})
    sample_prompts: str = field(default="", metadata={"help": "a kohya-format prompt file (one prompt a line; --n negative, --w/--h size, --d seed, --l CFG, --s steps): one image per line every --sample-every steps and after the last, saved with A1111 parameters"})
    validation_prompts: list[str] = field(default_factory=list, metadata={"help": "prompts for validation grids"})
    validation_steps: int = field(default=20, metadata={"help": "denoising steps for validation images"})
    resume: str = field(default="", metadata={"help": "latest or a checkpoint folder"})
    save_dtype: str = field(default="fp16", metadata={"help": "dtype of the adapter file"})
    log_dir: str = field(default="", metadata={"help": "TensorBoard and JSONL logs (default: next to the output)"})
    log_with: str = field(default="auto", metadata={"help": "experiment trackers through accelerate: auto (TensorBoard when installed), none, tensorboard, wandb (offline without WANDB_API_KEY) or all"})
    record_paths: bool = field(default=False, metadata={"help": "store the data folder's absolute path in the adapter metadata"})

    def validate(self) -> "TrainConfig":
        """Raise ``UserError`` naming the first bad key and its allowed values.

        Keys still ``None`` are derived later (``plan.derive_plan``) and are not checked here.
        """
        if not self.data and not self.dataset_config:
            raise UserError("train: no data given; pass --data DIR (a folder of images) or set data: in the config")
        if self.data and self.dataset_config:
            raise UserError("--data and --dataset-config both given: the dataset config lists its folders; "
                            "give one of them")
        if self.reg_generate and not self.class_prompt.strip():
            raise UserError("--reg-generate needs --class-prompt: the prompt of the class images (e.g. 'a photo of "
                            "a dog')")
        if self.reg_generate < 0 or self.prior_loss_weight < 0:
            raise UserError("--reg-generate and --prior-loss-weight must not be negative")
        if not self.output:
            raise UserError("train: no output given; pass --output FILE.safetensors")
        if not self.output.endswith(".safetensors"):
            raise UserError(f"--output {self.output!r} must end in .safetensors; e.g. --output my_style.safetensors")
        for key, allowed in CHOICES.items():
            if getattr(self, key) is not None and getattr(self, key) not in allowed:
                raise UserError(f"config key {key!r} is {getattr(self, key)!r}; allowed values: {', '.join(allowed)}")
        positive = ("steps", "rank", "batch_size", "gradient_accumulation", "checkpoints_to_keep", "validation_steps",
                    "max_bad_steps", "cpu_threads")
        for key in positive:
            if _given(self, key) and getattr(self, key) < 1:
                raise UserError(f"config key {key!r} must be at least 1, got {getattr(self, key)!r}")
        for key in ("lr", "alpha"):
            if _given(self, key) and not getattr(self, key) > 0:
                raise UserError(f"config key {key!r} must be greater than 0, got {getattr(self, key)!r}")
        for key in ("text_encoder_lr", "max_grad_norm", "min_snr_gamma", "noise_offset", "weight_decay"):
            if _given(self, key) and getattr(self, key) < 0:
                raise UserError(f"config key {key!r} must not be negative, got {getattr(self, key)!r}")
        for key in ("caption_dropout", "lora_dropout"):
            if _given(self, key) and not 0 <= getattr(self, key) < 1:
                raise UserError(f"config key {key!r} must be in [0, 1), got {getattr(self, key)!r}")
        for key in ("resolution", "checkpoint_every", "save_every", "sample_every", "lr_warmup_steps", "keep_tokens"):
            if _given(self, key) and getattr(self, key) < 0:
                raise UserError(f"config key {key!r} must not be negative, got {getattr(self, key)!r}")
        if not 0 <= self.validation_split < 1:
            raise UserError(f"--validation-split must be in [0, 1), got {self.validation_split!r} (e.g. 0.1 holds "
                            "out a tenth of the images)")
        if not 0 < self.train_weight_min <= 1:
            raise UserError(f"config key 'train_weight_min' must be in (0, 1], got {self.train_weight_min!r}")
        if not 0 <= self.min_timestep < self.max_timestep <= 1000:
            raise UserError(f"timesteps {self.min_timestep}..{self.max_timestep}: need 0 <= --min-timestep < "
                            "--max-timestep <= 1000 (the SD schedulers' 1000 training timesteps)")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"config key 'ema_decay' must be in [0, 1) (0: off), got {self.ema_decay!r}")
        if self.discrete_flow_shift <= 0:
            raise UserError(f"config key 'discrete_flow_shift' must be positive, got {self.discrete_flow_shift!r}")
        if self.network != "lora" and self.lora_dropout:
            raise UserError("config key 'lora_dropout' works with --network lora only (LoHa/LoKr build their weight "
                            "change whole); drop --lora-dropout or use --network lora")
        if self.lokr_factor != -1 and self.lokr_factor < 1:
            raise UserError(f"config key 'lokr_factor' must be -1 or a positive integer, got {self.lokr_factor!r}")
        if self.resolution and self.resolution % 8:
            raise UserError(f"config key 'resolution' must be a multiple of 8, got {self.resolution}")
        return self


def _given(config: TrainConfig, key: str) -> bool:
    return getattr(config, key) is not None


# keys whose default is None: derived from the base, the data and the device (see plan.py)
DERIVED = frozenset(f.name for f in fields(TrainConfig) if f.default is None)


def field_types() -> dict[str, Any]:
    """key -> the value's type (``int | None`` is reported as ``int``)."""
    out = {}
    for key, kind in get_type_hints(TrainConfig).items():
        if get_origin(kind) in (Union, UnionType):
            kind = next(a for a in get_args(kind) if a is not type(None))
        out[key] = kind
    return out


def _coerce(key: str, value: Any, source: str) -> Any:
    kind = field_types()[key]
    if key in DERIVED and (value is None or str(value).strip().lower() == "auto"):
        return None  # "auto" (or null in YAML) hands the key back to the plan
    if key == "resolution" and str(value).strip() == "0":
        return None  # 0 meant "the base's native size" before sizes were derived
    if get_origin(kind) is list:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise UserError(f"{source}: key {key!r} must be a list of strings")
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        name = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a string")
        auto = " or auto" if key in DERIVED else ""
        where = f"--{key.replace('_', '-')}" if source == "command line" else f"{source}: key {key!r}"
        raise UserError(f"{where} must be {name}{auto}, got {value!r}") from None


def apply_values(config: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    """Set ``values`` on ``config`` with type coercion; unknown keys are an error naming them."""
    known = {f.name for f in fields(TrainConfig)}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key not in known:
            close = [k for k in sorted(known) if k.startswith(key[:4])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"{source}: unknown config key {raw_key!r}{hint}; see 'lora-diffusion train --help' for all keys")
        setattr(config, key, _coerce(key, value, source))
    return config


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"config file {path} is not valid YAML{where}; check its syntax") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must be a mapping of keys to values")
    return values


def parse_set(items: list[str]) -> dict[str, str]:
    """``["key=value", ...]`` from ``--set``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r} must look like key=value")
        out[key.strip()] = value
    return out


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def help_for(key: str) -> str:
    """A flag's help: what it does, its choices and its default ("derived" for planned keys)."""
    for f in fields(TrainConfig):
        if f.name == key:
            text = f.metadata.get("help", "")
            if key in CHOICES:
                text += f" ({'/'.join(CHOICES[key])})"
            if key in DERIVED:
                text += " [default: derived from the base, data and device]"
            elif f.default_factory is dataclasses.MISSING and not isinstance(f.default, bool) and f.default != "":
                text += f" [default: {f.default}]"
            return text.replace("%", "%%")
    return ""


def flag_kinds() -> dict[str, Any]:
    """key -> python type, for building CLI flags."""
    return {k: (list if get_origin(v) is list else v) for k, v in field_types().items()}


__all__ = ["TrainConfig", "CHOICES", "DERIVED", "apply_values", "load_yaml", "parse_set", "to_dict", "help_for", "flag_kinds"]

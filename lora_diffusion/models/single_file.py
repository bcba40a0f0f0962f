"""Single-file checkpoints (A1111 / ComfyUI ``.safetensors``): read offline, and write.

Reading hands the file to diffusers' ``from_single_file`` with a local config folder written
here, so no config is fetched from the hub: the configs our own ``bake --single-file`` stored
in the file's metadata when present, else the reference SD1.x / SD2.x / SDXL configs. The
tokenizer is CLIP's BPE vocabulary, which ships with the built-in model.
Pickle checkpoints are read only with ``allow_pickle=True``, then with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import UserError
from ..file_modes import make_like_new_file
from ..safe_write import atomic_write
from .builtin import builtin_path
from .original_layout import checkpoint_architecture, pipeline_to_original
from .reference_configs import ARCHITECTURES

CONFIG_KEY = "lora_diffusion.configs"
SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, sample_size=512,
    scaling_factor=0.18215,
)
SD_SCHEDULER = dict(
    _class_name="EulerDiscreteScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
    beta_schedule="scaled_linear", steps_offset=1, prediction_type="epsilon", timestep_spacing="leading",
)


def unsupported_checkpoint(path: Path, arch: str) -> UserError:
    """The one line for a single file of a family whose checkpoints are not read here (FLUX.1, SD3: their
    transformer alone, in the model's original names)."""
    from ..families import get

    return UserError(f"base {path}: a {get(arch).label} checkpoint in its original single-file layout, which is not "
                     f"read yet; use the diffusers folder of the same model (the official repositories ship one "
                     f"beside the single file: the folder with model_index.json)")


def _family_single_file(path: Path, arch: str, dtype: torch.dtype):
    from ..families import get

    family = get(arch)
    if family.single_file_pipeline is None or path.parent.name.startswith("lora-diffusion-single-"):
        raise unsupported_checkpoint(path, arch)  # no reader, or a pickle converted into a temporary folder
    return family.single_file_pipeline(path, dtype)


def reference_configs(arch: str) -> dict[str, dict]:
    spec = ARCHITECTURES[arch]
    configs = {"unet": dict(spec["unet"]), "vae": dict(SD_VAE), "scheduler": dict(SD_SCHEDULER)}
    if arch == "sdxl":
        configs["vae"].update(sample_size=1024, scaling_factor=0.13025)
        configs["text_encoder"], configs["text_encoder_2"] = dict(spec["te1"]), dict(spec["te2"])
        configs["scheduler"]["timestep_spacing"] = "leading"
    else:
        configs["text_encoder"] = dict(spec["te"])
    if arch == "sd2":
        # the 768 px SD2.x models (the common ones) predict v; the 512 px "base" ones predict epsilon
        configs["scheduler"]["prediction_type"] = "v_prediction"
    return configs


def _pipeline_configs(pipe) -> dict[str, dict]:
    configs = {"unet": dict(pipe.unet.config), "vae": dict(pipe.vae.config), "scheduler": dict(pipe.scheduler.config)}
    configs["text_encoder"] = pipe.text_encoder.config.to_diff_dict()
    if getattr(pipe, "text_encoder_2", None) is not None:
        configs["text_encoder_2"] = pipe.text_encoder_2.config.to_diff_dict()
    configs["scheduler"]["_class_name"] = type(pipe.scheduler).__name__
    return configs


def save_single_file(pipe, path: str | os.PathLike, arch: str, dtype: str = "fp16") -> Path:
    """Write ``pipe`` as one original-layout ``.safetensors`` checkpoint (atomically)."""
    from safetensors.torch import save_file

    from .. import __version__

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"single-file output {path} must end in .safetensors")
    tensors = {k: v.to(SAVE_DTYPES[dtype]) if v.is_floating_point() else v for k, v in pipeline_to_original(pipe, arch).items()}
    metadata = {
        CONFIG_KEY: json.dumps(_pipeline_configs(pipe), default=_json_default),
        "lora_diffusion.base": arch,
        "lora_diffusion.version": __version__,
        "format": "pt",
    }
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        make_like_new_file(tmp)
    return path


def _json_default(value):
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return str(value)


def _write_config_folder(folder: Path, arch: str, configs: dict[str, dict]) -> None:
    from diffusers import __version__ as diffusers_version

    xl = arch == "sdxl"
    index = {
        "_class_name": "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline",
        "_diffusers_version": diffusers_version,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", configs["scheduler"].get("_class_name", "EulerDiscreteScheduler")],
    }
    if xl:
        index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
        index["tokenizer_2"] = ["transformers", "CLIPTokenizer"]
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index))
    names = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
             "text_encoder_2": "config.json", "scheduler": "scheduler_config.json"}
    for component, config in configs.items():
        (folder / component).mkdir()
        config = {k: v for k, v in config.items() if not k.startswith("_") or k == "_class_name"}
        if component.startswith("text_encoder"):
            config["architectures"] = ["CLIPTextModelWithProjection" if component.endswith("_2") else "CLIPTextModel"]
            config.setdefault("model_type", "clip_text_model")
            config["torch_dtype"] = config["dtype"] = "float32"
        (folder / component / names[component]).write_text(json.dumps(config, default=_json_default))
    tokenizers = ["tokenizer"] + (["tokenizer_2"] if xl else [])
    for name in tokenizers:
        shutil.copytree(builtin_path() / "tokenizer", folder / name)
        if arch == "sd2" or name == "tokenizer_2":
            # OpenCLIP text encoders pad with "!" (id 0), not with the end token
            cfg_path = folder / name / "tokenizer_config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["pad_token"] = "!"
            cfg_path.write_text(json.dumps(cfg))


def read_pickle_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.ckpt``/``.pt``/``.bin`` file, loaded with ``weights_only=True`` (no code runs)."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means the file cannot be used safely
        raise UserError(f"checkpoint {path} cannot be read as plain tensors ({str(error).splitlines()[0][:160]}); "
                        "it may need code to load, which is refused") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise UserError(f"checkpoint {path} does not hold a state dict")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def load_single_file(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, allow_pickle: bool = False):
    """A diffusers pipeline from one original-layout checkpoint, with no network access."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="lora-diffusion-single-") as tmp:
        tmp = Path(tmp)
        if path.suffix.lower() != ".safetensors":
            if not allow_pickle:
                raise UserError(
                    f"base {path} is a pickle checkpoint, which can run code when loaded; convert it to "
                    ".safetensors, or pass --allow-pickle to read it with torch.load(weights_only=True)"
                )
            converted = tmp / "checkpoint.safetensors"
            save_file({k: v.contiguous() for k, v in read_pickle_checkpoint(path).items()}, str(converted))
            path = converted
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys, metadata = list(handle.keys()), dict(handle.metadata() or {})
        except (SafetensorError, OSError) as error:
            raise UserError(f"base {path}: not a valid safetensors checkpoint ({error})") from None
        arch = checkpoint_architecture(keys)
        if arch is None:
            raise UserError(
                f"base {path}: not a Stable Diffusion single-file checkpoint (no model.diffusion_model.* tensors); "
                "a LoRA file goes to --lora, a diffusers model is a folder"
            )
        if arch not in ARCHITECTURES:
            return _family_single_file(path, arch, dtype)
        try:
            configs = json.loads(metadata[CONFIG_KEY]) if CONFIG_KEY in metadata else reference_configs(arch)
        except json.JSONDecodeError:
            configs = reference_configs(arch)
        folder = tmp / "config"
        folder.mkdir()
        _write_config_folder(folder, arch, configs)
        if "text_encoder_2" in configs:
            from diffusers import StableDiffusionXLPipeline as Pipeline
        else:
            from diffusers import StableDiffusionPipeline as Pipeline
        pipe = Pipeline.from_single_file(str(path), config=str(folder), local_files_only=True, torch_dtype=dtype)
    return pipe

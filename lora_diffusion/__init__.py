"""lora-diffusion: train LoRA adapters for diffusion models and blend them by weight.

The data path, one module per stage:
files → ``data`` → latents/text states → ``training`` → adapter file (``adapters``)
→ loader (``adapters.apply``) → blended weights (``lora``) → pipeline → images.
"""

__version__ = "0.1.0"

import time as _time  # noqa: E402

# a command's clock starts here, before torch and the libraries load (the interpreter's own start is ~50 ms
# earlier); /proc's process start time has only 1 s resolution in some containers
IMPORTED_AT = _time.time()

import logging  # noqa: E402

# diffusers and peft import torchao when it is installed; on a torch build without its optional
# kernels (any CPU build) it logs one warning per kernel library it cannot load, and its enum
# registrations log torch deprecation notices; diffusers warns when a newer torchao moved the tensor
# types it allow-lists for torchao-serialized checkpoints (which we never load); transformers 5 warns that
# the safety checker's image processor falls back to PIL without torchvision (we never run it): noise on
# every command, nothing a user can act on
for _noisy in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer",
               "transformers.utils.import_utils"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

from .errors import UserError  # noqa: E402

# The public API, imported on first use (PEP 562): `lora-diffusion --help`, a typo and the file checks answer
# without loading torch (seconds on a busy machine); `from lora_diffusion import read_adapter` works as always.
_API = {
    "apply_adapter": "adapters.apply", "extract_adapter": "adapters.apply", "load_adapter": "adapters.apply",
    "pipeline_components": "adapters.apply", "save_adapter": "adapters.apply",
    "AdapterFile": "adapters.file", "ModuleLora": "adapters.file", "ModuleLycoris": "adapters.file",
    "read_adapter": "adapters.file", "write_adapter": "adapters.file",
    "LoraConfig": "lora.config",
    "adapter_names": "lora.inject", "blend_adapters": "lora.inject", "delete_adapter": "lora.inject",
    "inject_adapter": "lora.inject", "lora_layers": "lora.inject", "lora_parameters": "lora.inject",
    "merge_adapters": "lora.inject", "parameter_report": "lora.inject", "remove_lora": "lora.inject",
    "set_adapter_enabled": "lora.inject", "set_adapter_weight": "lora.inject", "unmerge_adapters": "lora.inject",
    "LoraConv2d": "lora.layers", "LoraLayer": "lora.layers", "LoraLinear": "lora.layers",
}


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'lora_diffusion' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "AdapterFile",
    "LoraConfig",
    "LoraConv2d",
    "LoraLayer",
    "LoraLinear",
    "ModuleLora",
    "ModuleLycoris",
    "UserError",
    "adapter_names",
    "apply_adapter",
    "blend_adapters",
    "delete_adapter",
    "extract_adapter",
    "inject_adapter",
    "load_adapter",
    "lora_layers",
    "lora_parameters",
    "merge_adapters",
    "parameter_report",
    "pipeline_components",
    "read_adapter",
    "remove_lora",
    "save_adapter",
    "set_adapter_enabled",
    "set_adapter_weight",
    "unmerge_adapters",
    "write_adapter",
]

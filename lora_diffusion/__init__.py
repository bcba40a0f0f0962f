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

from .adapters.apply import (  # noqa: E402
    apply_adapter,
    extract_adapter,
    load_adapter,
    pipeline_components,
    save_adapter,
)
from .adapters.file import AdapterFile, ModuleLora, ModuleLycoris, read_adapter, write_adapter  # noqa: E402
from .errors import UserError  # noqa: E402
from .lora.config import LoraConfig  # noqa: E402
from .lora.inject import (  # noqa: E402
    adapter_names,
    blend_adapters,
    delete_adapter,
    inject_adapter,
    lora_layers,
    lora_parameters,
    merge_adapters,
    parameter_report,
    remove_lora,
    set_adapter_enabled,
    set_adapter_weight,
    unmerge_adapters,
)
from .lora.layers import LoraConv2d, LoraLayer, LoraLinear  # noqa: E402

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

"""Shared by the UI tests: LoRAs for the built-in base, and a running app on a free port."""

import socket

from conftest import randomize_lora


def builtin_loras(folder, names=("sepia-ish", "bold")):
    """Random-B rank-4 LoRAs that fit the built-in base, written into ``folder``."""
    from lora_diffusion import LoraConfig, inject_adapter, pipeline_components, save_adapter
    from lora_diffusion.models.loading import load_pipeline

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        comps = pipeline_components(load_pipeline("builtin"))
        inject_adapter(comps["unet"], "x", LoraConfig(rank=4, alpha=4))
        randomize_lora(comps["unet"], "x", 40 + i, 0.5)
        save_adapter(folder / f"{name}.safetensors", {"unet": comps["unet"]}, "x",
                     metadata={"lora_diffusion.trigger_words": ["<b>not html</b>"]})
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(lora_dir, out_dir):
    from lora_diffusion.ui.app import launch

    port = free_port()
    demo, url = launch(str(lora_dir), port=port, out_dir=str(out_dir), block=False)
    return demo, url

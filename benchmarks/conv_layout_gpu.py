"""GPU experiment (issue 16): do cuDNN autotuning and channels-last convolutions speed up the trainer?

    python benchmarks/conv_layout_gpu.py

SD1.5-architecture pipeline with random weights, 512 px, bf16, rank 4, the derived defaults (CUDA graphs);
batch 8 and 32 with cached latents, and batch 8 with `--crop random --flip` (the VAE encodes every step).
Variants: as shipped; `torch.backends.cudnn.benchmark = True`; that plus channels-last UNet and VAE
(patched into the loader here, so the trainer itself is unchanged). Steady images/s, median step.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch

RUNS = [(8, {}), (32, {}), (8, {"crop": "random", "flip": True})]


def run(base: Path, data: Path, out: Path, images: int, batch: int, extra: dict, tag: str) -> float:
    from lora_diffusion.training.config import TrainConfig
    from lora_diffusion.training.trainer import train

    warm = math.ceil(images / batch) + 3
    times: list[float] = []
    cfg = TrainConfig(base=str(base), data=str(data), output=str(out / f"{tag}-b{batch}.safetensors"), resolution=512,
                      steps=warm + 20, batch_size=batch, rank=4, alpha=4, lr=1e-4, mixed_precision="bf16", **extra)
    train(cfg, progress=False, on_step=lambda r: (torch.cuda.synchronize(), times.append(time.perf_counter())))
    gaps = [b - a for a, b in zip(times[warm:], times[warm + 1:])]
    return batch / statistics.median(gaps)


def channels_last_loader():
    import lora_diffusion.training.run_setup as run_setup

    real = run_setup.load_pipeline

    def load(*args, **kwargs):
        pipe = real(*args, **kwargs)
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        return pipe

    run_setup.load_pipeline = load


def main() -> None:
    from sd15_setup import prepare

    base, data = prepare(Path("/tmp/sd15bench"), 64)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    print("| variant | batch 8 | batch 32 | batch 8, random crop + flip |")
    print("|---|---|---|---|", flush=True)
    for tag in ("shipped", "cudnn-benchmark", "cudnn-benchmark+channels-last"):
        if tag != "shipped":
            torch.backends.cudnn.benchmark = True
        if tag.endswith("channels-last"):
            channels_last_loader()
        rates = [run(base, data, Path("/tmp/convruns"), 64, b, extra, tag) for b, extra in RUNS]
        print(f"| {tag} | " + " | ".join(f"{r:.1f}" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    main()

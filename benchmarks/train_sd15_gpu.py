"""GPU benchmark: this project's trainer on an SD1.5-architecture pipeline (random weights, no download).

    python benchmarks/train_sd15_gpu.py --batches 1 8 32 --variants eager compile lowmem

Runs `lora_diffusion.training.train` (the code behind `lora-diffusion train`: folder scan, data
loading, latent/text caching, accelerate loop) at the peer's settings (512 px, bf16, rank 4,
attention Q/K/V/O) and reports steady-state images/s (median step time over the last steps, after the
first epoch has cached every latent and, with compile, after compilation) and peak GPU memory.
Variants: eager; compile (torch.compile of the UNet); lowmem (gradient checkpointing, all latents and
captions encoded first, then VAE and text encoder moved to the CPU).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import torch

VARIANTS = {
    "eager-no-offload": {"offload_encoders": "off"},
    "eager": {},
    "compile": {"compile": True},
    "compile-graphs": {"compile": True, "compile_mode": "reduce-overhead"},
    "lowmem": {"gradient_checkpointing": True, "offload_encoders": "on"},
    "lowmem-graphs": {"gradient_checkpointing": True, "offload_encoders": "on", "compile": True,
                      "compile_mode": "reduce-overhead"},
}
MEASURE = {1: 60, 8: 30, 32: 15}


def run(base: Path, data: Path, out: Path, images: int, batch: int, variant: str) -> dict:
    from lora_diffusion.training.config import TrainConfig
    from lora_diffusion.training.trainer import train

    warm = math.ceil(images / batch) + (8 if "compile" in variant else 3)
    measure = MEASURE.get(batch, 20)
    times: list[float] = []
    cfg = TrainConfig(base=str(base), data=str(data), output=str(out / f"{variant}-b{batch}.safetensors"),
                      resolution=512, steps=warm + measure, batch_size=batch, rank=4, alpha=4, lr=1e-4,
                      mixed_precision="bf16", **VARIANTS[variant])
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    train(cfg, progress=False, on_step=lambda record: (torch.cuda.synchronize(), times.append(time.perf_counter())))
    if not times:  # on_step runs on the main process only; the other ranks just train
        return {}
    gaps = [b - a for a, b in zip(times[warm:], times[warm + 1:])]
    world = int(os.environ.get("WORLD_SIZE", "1"))  # under `accelerate launch` every process takes a batch
    return {"variant": variant, "batch": batch, "world": world, "img_s": batch * world / statistics.median(gaps),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "first_step_s": times[0] - started,
            "total_s": time.perf_counter() - started}


def main() -> None:
    from sd15_setup import prepare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/sd15bench"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--variants", nargs="+", default=["eager", "compile"], choices=list(VARIANTS))
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    started = time.time()
    base, data = prepare(args.work, args.images)
    main_process = os.environ.get("RANK", "0") == "0"
    if main_process:
        print(f"setup {time.time() - started:.0f} s; {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
        print("| variant | GPUs | batch per GPU | img/s (steady) | peak GPU memory (GiB) | first step (s) | run (s) |")
        print("|---|---|---|---|---|---|---|", flush=True)
    for variant in args.variants:
        for batch in args.batches:
            r = run(base, data, args.work / "runs", args.images, batch, variant)
            if main_process and r:
                print(f"| {r['variant']} | {r['world']} | {r['batch']} | {r['img_s']:.1f} | {r['peak_gib']:.2f} | "
                      f"{r['first_step_s']:.0f} | {r['total_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()

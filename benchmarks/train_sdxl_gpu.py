"""GPU benchmark: this project's trainer on an SDXL-architecture pipeline (random weights, no download).

    python benchmarks/train_sdxl_gpu.py --batches 1 4 --variants default lowmem compile graphs

Runs `lora_diffusion.training.train` — the code behind `lora-diffusion train`: folder scan, plan,
data loading, latent and text caching for both encoders, accelerate loop — at the peer's settings
(1024 px, bf16, rank 4 on attention Q/K/V/O) and reports steady-state images/s (median step time after
every latent is cached and, with compile, after compilation), peak GPU memory, the time from the call
to the first finished step, and the whole run's wall time.
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
    "default": {},
    "eager": {"cuda_graphs": False},
    "no-offload": {"offload_encoders": "off"},
    "lowmem": {"gradient_checkpointing": True},
    "lowmem-eager": {"gradient_checkpointing": True, "cuda_graphs": False},
    "compile": {"compile": True},
    "graphs": {"compile": True, "compile_mode": "reduce-overhead"},
    "lowmem-graphs": {"gradient_checkpointing": True, "compile": True, "compile_mode": "reduce-overhead"},
}
MEASURE = {1: 40, 2: 30, 4: 20, 8: 12}


def run(base: Path, data: Path, out: Path, images: int, batch: int, variant: str, rank: int) -> dict:
    from lora_diffusion.training.config import TrainConfig
    from lora_diffusion.training.trainer import train

    warm = math.ceil(images / batch) + (5 if "compile" in VARIANTS[variant] else 2)
    times: list[float] = []
    settings = dict(gradient_checkpointing=False, compile=False) | VARIANTS[variant]
    cfg = TrainConfig(base=str(base), data=str(data), output=str(out / f"{variant}-b{batch}.safetensors"),
                      resolution=1024, steps=warm + MEASURE.get(batch, 10), batch_size=batch, rank=rank, alpha=rank,
                      lr=1e-4, mixed_precision="bf16", **settings)
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    train(cfg, progress=False, on_step=lambda record: (torch.cuda.synchronize(), times.append(time.perf_counter())))
    total = time.perf_counter() - started
    if not times:  # on_step runs on the main process only; the other ranks just train
        return {}
    gaps = [b - a for a, b in zip(times[warm:], times[warm + 1:])]
    world = int(os.environ.get("WORLD_SIZE", "1"))  # under `accelerate launch` every process takes a batch
    return {"variant": variant, "batch": batch, "world": world, "img_s": batch * world / statistics.median(gaps),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "first_step_s": times[0] - started,
            "total_s": total, "steps": cfg.steps}


def main() -> None:
    from sdxl_setup import prepare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/sdxlbench"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--variants", nargs="+", default=["default", "lowmem"], choices=list(VARIANTS))
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rank", type=int, default=4)
    args = parser.parse_args()
    started = time.time()
    main_process = os.environ.get("RANK", "0") == "0"
    base, data = prepare(args.work, args.images)  # under `accelerate launch`, build it in a run before
    if main_process:
        print(f"setup {time.time() - started:.0f} s; {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
        print("| variant | GPUs | batch per GPU | img/s (steady) | peak GPU memory (GiB) | first step (s) | run (s) | steps |")
        print("|---|---|---|---|---|---|---|---|", flush=True)
    for variant in args.variants:
        for batch in args.batches:
            r = run(base, data, args.work / "runs", args.images, batch, variant, args.rank)
            if main_process and r:
                print(f"| {r['variant']} | {r['world']} | {r['batch']} | {r['img_s']:.2f} | {r['peak_gib']:.2f} | "
                      f"{r['first_step_s']:.0f} | {r['total_s']:.0f} | {r['steps']} |", flush=True)


if __name__ == "__main__":
    main()

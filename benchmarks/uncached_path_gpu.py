"""GPU probe (issue 16): with random crops, is the step waiting on pixels (CPU) or on the VAE (GPU)?

    python benchmarks/uncached_path_gpu.py

SD1.5-architecture pipeline (random weights), 64 images at 512 px. Measures (1) how many images/s the
trainer's pixel path (`TrainingData.pixels`: decode, resize, random crop, flip) delivers on the thread pool the
trainer uses, and (2) the VAE encode of a batch of 8 in bf16, median of 20.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch


def main() -> None:
    from sd15_setup import prepare

    from lora_diffusion.data.dataset import TrainingData
    from lora_diffusion.data.folder import scan_folder
    from lora_diffusion.data.prefetch import default_workers
    from lora_diffusion.models.loading import load_pipeline

    base, data_dir = prepare(Path("/tmp/sd15bench"), 64)
    data = TrainingData(scan_folder(str(data_dir)).examples, 512, crop="random", flip=True, seed=0)
    workers = default_workers()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: data.pixels(i, 0), range(len(data.items))))  # warm the page cache
        started = time.perf_counter()
        count = 0
        for epoch in range(1, 4):
            list(pool.map(lambda i: data.pixels(i, epoch), range(len(data.items))))
            count += len(data.items)
        rate = count / (time.perf_counter() - started)
    single = time.perf_counter()
    for i in range(16):
        data.pixels(i, 9)
    single = (time.perf_counter() - single) / 16
    print(f"pixels: {rate:.0f} img/s on {workers} threads; {1000 * single:.1f} ms per image on one thread", flush=True)

    vae = load_pipeline(str(base), dtype=torch.bfloat16).vae.to("cuda")
    batch = torch.stack([data.pixels(i, 0) for i in range(8)]).to("cuda", torch.bfloat16)
    times = []
    with torch.no_grad():
        for _ in range(25):
            torch.cuda.synchronize()
            t = time.perf_counter()
            vae.encode(batch).latent_dist.sample()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    print(f"VAE encode, batch 8, bf16: {1000 * statistics.median(times[5:]):.1f} ms", flush=True)


if __name__ == "__main__":
    main()

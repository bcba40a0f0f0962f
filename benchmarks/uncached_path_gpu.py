"""GPU probe (issue 16): with random crops, is the step waiting on pixels (CPU) or on the VAE (GPU)?

    python benchmarks/uncached_path_gpu.py

SD1.5-architecture pipeline (random weights), 64 images at 512 px. Measures (1) how many images/s the
trainer's pixel path (`TrainingData.pixels`: decode, resize, random crop, flip) delivers on the thread pool the
trainer uses, and (2) the VAE encode of a batch of 8 in bf16, median of 20, as the trainer runs it and in
the variants that could make it cheaper: the VAE in channels-last memory, the encode captured as a CUDA
graph, and the encoder compiled by inductor (its compile time reported beside).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from gpu_timing import median_gpu_seconds


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

    def moments(pixels):  # what the trainer keeps of an encode: the posterior's parameters
        return vae.quant_conv(vae.encoder(pixels))

    def timed(name, fn):
        with torch.no_grad():
            seconds = median_gpu_seconds(fn)
        print(f"VAE encode, batch 8, bf16, {name}: {1000 * seconds:.1f} ms", flush=True)

    timed("as the trainer runs it", lambda: moments(batch))
    with torch.no_grad():
        static = batch.clone()
        moments(static)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            moments(static)
    timed("captured as a CUDA graph", graph.replay)
    del graph
    vae.to(memory_format=torch.channels_last)
    timed("channels-last", lambda: moments(batch.to(memory_format=torch.channels_last)))
    vae.to(memory_format=torch.contiguous_format)
    compiled = torch.compile(moments)
    started = time.perf_counter()
    with torch.no_grad():
        compiled(batch)
    torch.cuda.synchronize()
    print(f"inductor compile of the encoder: {time.perf_counter() - started:.1f} s (cold cache)", flush=True)
    timed("compiled (inductor)", lambda: compiled(batch))


if __name__ == "__main__":
    main()

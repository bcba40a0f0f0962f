"""GPU probe (issue 16): does compiling only the UNet's repeated blocks, inside the CUDA-graph step, reach the
compiler's batch-8/32 rates, and what does the compile cost cold and with inductor's on-disk cache warm?

    python benchmarks/regional_compile_gpu.py --batches 8 32             # eager blocks vs compiled blocks
    python benchmarks/regional_compile_gpu.py --only compiled --batches 8   # again: the cache is warm now

SD1.5-architecture UNet (random weights), bf16, rank-4 LoRA on attention as the trainer injects it, the
step as the trainer runs it (GraphedUNet: forward and backward captured), fused AdamW. "Blocks" are the
transformer blocks and ResNet blocks, compiled one by one with ``nn.Module.compile`` (inductor, default
mode); blocks of one class and shape share their compiled code. Reported per batch: seconds from the first
call to a replayable step (compile + capture), and the steady images/s (median of 20 steps).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def build(base: Path):
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    from lora_diffusion.lora.config import LoraConfig
    from lora_diffusion.lora.inject import inject_adapter
    from lora_diffusion.models.loading import load_pipeline
    from lora_diffusion.training.lean_activations import lean_feed_forwards

    unet = load_pipeline(str(base), dtype=torch.bfloat16).unet
    unet.requires_grad_(False)
    torch.manual_seed(0)
    inject_adapter(unet, "default", LoraConfig(rank=4, alpha=4))
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    lean_feed_forwards(unet)
    return unet.to("cuda"), (BasicTransformerBlock, ResnetBlock2D)


def run(unet, batch: int) -> tuple[float, float]:
    from diffusers import DDPMScheduler

    from lora_diffusion.training.cuda_graphs import GraphedUNet

    step_unet = GraphedUNet(unet, report=lambda text: print(text, flush=True))  # names a failed capture
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    latents = torch.randn(batch, 4, 64, 64, device="cuda", dtype=torch.bfloat16)
    states = torch.randn(batch, 77, 768, device="cuda", dtype=torch.bfloat16)

    def step():
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (1,), device="cuda")
        noisy = scheduler.add_noise(latents, noise, t)
        pred = step_unet(noisy, t, states).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    started = time.perf_counter()
    step().item()
    ready = time.perf_counter() - started
    times = []
    for _ in range(25):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return ready, batch / statistics.median(times[5:])


def main() -> None:
    from sd15_setup import prepare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--only", choices=["eager", "compiled"], default=None)
    parser.add_argument("--fallback-random", action="store_true",
                        help="inductor's random ops as eager ATen calls (capture-safe RNG offsets)")
    args = parser.parse_args()
    if args.fallback_random:
        import torch._inductor.config

        torch._inductor.config.fallback_random = True
    base, _ = prepare(Path("/tmp/sd15bench"), 64)
    for variant in [args.only] if args.only else ["eager", "compiled"]:
        unet, block_types = build(base)
        if variant == "compiled":
            blocks = [m for m in unet.modules() if isinstance(m, block_types)]
            for block in blocks:
                block.compile()
        for batch in args.batches:
            try:
                ready, rate = run(unet, batch)
            except RuntimeError as error:
                print(f"{variant} blocks, batch {batch}: the step fails: {str(error).splitlines()[0]}", flush=True)
                break
            print(f"{variant} blocks, batch {batch}: first step after {ready:.1f} s (compile + capture), "
                  f"steady {rate:.1f} img/s, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)
            torch.cuda.reset_peak_memory_stats()
        del unet
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

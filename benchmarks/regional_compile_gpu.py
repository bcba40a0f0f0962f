"""GPU probe (issue 16): does compiling only the UNet's repeated blocks, inside the CUDA-graph step, reach the
compiler's batch-8/32 rates, and what does the compile cost cold and with inductor's on-disk cache warm?

    python benchmarks/regional_compile_gpu.py --batches 8 32             # eager blocks vs compiled blocks
    python benchmarks/regional_compile_gpu.py --only compiled --batches 8   # again: the cache is warm now
    python benchmarks/regional_compile_gpu.py --only compiled --no-graphs   # compiled blocks, eager step
    python benchmarks/regional_compile_gpu.py --only eager --no-graphs --kernels 45   # where the GPU time goes

SD1.5-architecture UNet (random weights), bf16, rank-4 LoRA on attention as the trainer injects it, the
step as the trainer runs it (GraphedUNet: forward and backward captured), fused AdamW. "Blocks" are the
transformer blocks and ResNet blocks, compiled one by one with ``nn.Module.compile`` (inductor, default
mode); blocks of one class and shape share their compiled code. Reported per batch: seconds from the first
call to a replayable step (compile + capture), and the steady images/s (median of 20 steps).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gpu_timing import median_gpu_seconds


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


def run(unet, batch: int, graphs: bool, kernels: int = 0) -> tuple[float, float]:
    from diffusers import DDPMScheduler

    from lora_diffusion.training.cuda_graphs import GraphedUNet

    # the report names a failed capture and its first error line
    step_unet = GraphedUNet(unet, report=lambda text: print(text, flush=True)) if graphs else unet
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
    ready = time.perf_counter() - started  # before any profiling below
    if kernels:
        from torch.profiler import ProfilerActivity, profile

        step().item()
        # CPU activity too: the table then names the ATen op behind each kernel's time
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=kernels), flush=True)
    return ready, batch / median_gpu_seconds(step)


def main() -> None:
    from sd15_setup import prepare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--only", choices=["eager", "compiled"], default=None)
    parser.add_argument("--no-graphs", action="store_true", help="the step eagerly (compiled blocks without capture)")
    parser.add_argument("--kernels", type=int, default=0, help="print the N costliest GPU kernels of 3 steps")
    parser.add_argument("--fallback-random", action="store_true",
                        help="inductor's random ops as eager ATen calls (capture-safe RNG offsets)")
    args = parser.parse_args()
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    # the UNet has ~20 block shapes (channels x resolution): each gets its own static graph
    dynamo_config.recompile_limit = 64
    inductor_config.fallback_random = args.fallback_random
    base, _ = prepare(Path("/tmp/sd15bench"), 64)
    for variant in [args.only] if args.only else ["eager", "compiled"]:
        unet, block_types = build(base)
        if variant == "compiled":
            blocks = [m for m in unet.modules() if isinstance(m, block_types)]
            for block in blocks:
                block.compile(dynamic=False)
        for batch in args.batches:
            try:
                ready, rate = run(unet, batch, graphs=not args.no_graphs, kernels=args.kernels)
            except RuntimeError as error:
                lines = [line for line in str(error).splitlines() if line.strip()]
                print(f"{variant} blocks, batch {batch}: the step fails: {lines[0]} ... {' | '.join(lines[-4:])}",
                      flush=True)
                break
            print(f"{variant} blocks, batch {batch}: first step after {ready:.1f} s (compile + capture), "
                  f"steady {rate:.1f} img/s, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)
            torch.cuda.reset_peak_memory_stats()
        del unet
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""Where the trainer's step time goes on a GPU: cProfile over a short eager run (CPU-side overhead)."""

import cProfile
import pstats
import sys
from pathlib import Path

import torch

from sd15_setup import prepare

from lora_diffusion.training.config import TrainConfig
from lora_diffusion.training.trainer import train

batch = int(sys.argv[1]) if len(sys.argv) > 1 else 1
base, data = prepare(Path("/tmp/sd15bench"), 64)
cfg = TrainConfig(base=str(base), data=str(data), output="/tmp/prof.safetensors", resolution=512,
                  steps=64 // batch + 40, batch_size=batch, rank=4, alpha=4, lr=1e-4, mixed_precision="bf16")
torch.backends.cuda.matmul.allow_tf32 = True
profile = cProfile.Profile()
profile.runcall(train, cfg, progress=False)
stats = pstats.Stats(profile)
stats.sort_stats("tottime").print_stats(12)
stats.print_callers("queue.py:154")
stats.print_callers("run_backward")
stats.sort_stats("cumulative").print_stats(30)

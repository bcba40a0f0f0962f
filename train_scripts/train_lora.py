"""Train a LoRA; a thin wrapper for `accelerate launch` (multi-GPU data-parallel, no code change).

    accelerate launch --num_processes 2 train_scripts/train_lora.py configs/sd15-gpu.yaml \
        --data my_images --output my_style.safetensors

Takes exactly the arguments of `lora-diffusion train`. Each process trains on its own
share of every step's batches; gradients and the logged loss are averaged across
processes; only the main process writes checkpoints, logs and the adapter file.
"""

import sys

from lora_diffusion.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

"""Every GPU benchmark in one command (run through the device tool):

    python benchmarks/gpu_suite.py [--train-variants eager compile lowmem] [--batches 1 8 32] [--skip-generate]

Prints the trainer table (img/s, peak memory per variant and batch) and the generation table.
"""

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-variants", nargs="+", default=["eager", "compile", "lowmem"])
    parser.add_argument("--batches", nargs="+", default=["1", "8", "32"])
    parser.add_argument("--skip-generate", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    if not args.skip_train:
        subprocess.run([sys.executable, str(HERE / "train_sd15_gpu.py"), "--variants", *args.train_variants,
                        "--batches", *args.batches], check=True)
    if not args.skip_generate:
        subprocess.run([sys.executable, str(HERE / "generate_sd15_gpu.py")], check=True)

"""One-line set-up: the torch build this machine can use (only when no torch is installed), then lora-diffusion.

    python3 install.py [EXTRAS]      e.g. python3 install.py test   (extras of pyproject.toml, comma-separated)
    python3 install.py --dry-run     print what it would run

A torch that is already installed is kept, whatever its build. Without one: an NVIDIA driver (``nvidia-smi``
answers) gets PyPI's default torch, the CUDA build; ROCm (``rocminfo`` answers) the ROCm build from PyTorch's
index; anything else a CPU build (about 200 MB, where PyPI's default on Linux is the 3 GB CUDA build): the newest
``+cpu`` torch pip can see — PyTorch's CPU index, or a local wheel or mirror pip is configured with, which is all an
offline machine has. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
ROCM_INDEX = "https://download.pytorch.org/whl/rocm6.4"


def _answers(tool: str) -> bool:
    if shutil.which(tool) is None:
        return False
    try:
        return subprocess.run([tool], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def newest_cpu_build(python: str) -> str | None:
    """The newest ``+cpu`` torch version pip can see (PyTorch's CPU index, or local wheels and mirrors), if any."""
    try:
        found = subprocess.run([python, "-m", "pip", "index", "versions", "torch", "--index-url", CPU_INDEX,
                                "--retries", "0", "--timeout", "15"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in found.stdout.splitlines():
        if line.startswith("Available versions:"):
            versions = [v.strip() for v in line.split(":", 1)[1].split(",")]
            return next((v for v in versions if v.endswith("+cpu")), None)  # pip lists the newest first
    return None


def torch_command(python: str, has_torch: bool, nvidia: bool, rocm: bool,
                  cpu_build: str | None = None) -> tuple[list[str] | None, str]:
    """(the pip command that installs torch, or None to keep the installed one; the reason, for the user).
    ``cpu_build``: the newest +cpu version pip can see, for a machine with no GPU driver."""
    if has_torch:
        return None, "torch is installed: kept as it is"
    pip = [python, "-m", "pip", "install"]
    if nvidia:
        return pip + ["torch"], "NVIDIA driver found: PyPI's torch (CUDA build)"
    if rocm:
        return pip + ["torch", "--index-url", ROCM_INDEX], "ROCm found: PyTorch's ROCm build"
    if cpu_build:
        return (pip + [f"torch=={cpu_build}", "--extra-index-url", CPU_INDEX, "--retries", "0"],
                f"no GPU driver found: the CPU build torch {cpu_build} (about 200 MB)")
    return pip + ["torch"], ("no GPU driver found, but no CPU build of torch is reachable: PyPI's default torch "
                             "(on Linux the 3 GB CUDA build)")


def main(argv: list[str]) -> int:
    dry = "--dry-run" in argv
    extras = ",".join(a for a in argv if not a.startswith("-"))
    has_torch = importlib.util.find_spec("torch") is not None
    nvidia, rocm = _answers("nvidia-smi"), _answers("rocminfo")
    cpu_build = None if has_torch or nvidia or rocm else newest_cpu_build(sys.executable)
    command, why = torch_command(sys.executable, has_torch, nvidia, rocm, cpu_build)
    package = str(HERE) + (f"[{extras}]" if extras else "")
    steps = ([command] if command else []) + [[sys.executable, "-m", "pip", "install", "-e", package]]
    print(f"install.py: {why}", flush=True)
    for step in steps:
        print("install.py: " + " ".join(step), flush=True)
        if not dry and subprocess.run(step).returncode != 0:
            print(f"install.py: failed: {' '.join(step)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

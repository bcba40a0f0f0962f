"""README command 1's installer picks the torch build the machine can use, and keeps one that is installed."""

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from install import CPU_INDEX, ROCM_INDEX, torch_command  # noqa: E402


def test_a_machine_without_a_gpu_driver_gets_the_cpu_build_and_a_gpu_machine_its_own():
    assert torch_command("py", has_torch=False, nvidia=False, rocm=False, cpu_build="2.13.0+cpu") == (
        ["py", "-m", "pip", "install", "torch==2.13.0+cpu", "--extra-index-url", CPU_INDEX, "--retries", "0"],
        "no GPU driver found: the CPU build torch 2.13.0+cpu (about 200 MB)")
    assert torch_command("py", has_torch=False, nvidia=False, rocm=False)[1].startswith(
        "no GPU driver found, but no CPU build of torch is reachable")
    assert torch_command("py", has_torch=False, nvidia=True, rocm=False, cpu_build="2.13.0+cpu") == (
        ["py", "-m", "pip", "install", "torch"], "NVIDIA driver found: PyPI's torch (CUDA build)")
    assert torch_command("py", has_torch=False, nvidia=False, rocm=True)[0][-1] == ROCM_INDEX
    assert torch_command("py", has_torch=True, nvidia=True, rocm=False) == (None, "torch is installed: kept as it is")


def test_the_dry_run_names_each_step():
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "install.py"), "test", "--dry-run"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.splitlines() == ["install.py: torch is installed: kept as it is",
                                        f"install.py: {sys.executable} -m pip install -e {root}[test]"]

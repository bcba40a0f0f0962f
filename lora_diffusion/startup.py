"""A command's start-up, made cheap: the seconds before a job's first step are most of a short job.

Two levers, both skipped with ``LORA_DIFFUSION_STARTUP=plain`` (the benchmarks' baseline, and an
escape hatch; ``all-imports`` or ``no-gpu-warmup`` skips one):

- optional packages that diffusers and transformers import eagerly when installed but that no command
  of ours uses are marked absent before those libraries load (``skip_unused_imports``);
- the GPU's driver context and its kernel libraries (cuDNN, cuBLAS) load on a background thread while
  the main thread imports Python modules (``warm_gpu_in_background``).
"""

from __future__ import annotations

import os
import sys
import threading

# diffusers imports peft at start-up when it is installed (its own LoRA loaders, which we never call),
# peft imports transformers' generation utilities, and those import scikit-learn (assisted decoding);
# diffusers imports torchao for its own quantization config (our --base-precision calls torchao itself):
# 2-4 s of every job's start on a machine that has them, for nothing we run. Marking them absent in
# sys.modules makes both libraries' availability checks (importlib.util.find_spec) answer "not
# installed", which every code path of theirs handles; restore_import undoes it for our own use.
UNUSED_OPTIONAL_PACKAGES = ("peft", "sklearn", "torchao")

_warmup: threading.Thread | None = None
_job_started_at: float | None = None  # wall-clock start of a CLI process (set by mark_process_start)


def _skipped(lever: str) -> bool:
    """True when ``LORA_DIFFUSION_STARTUP`` (comma-separated) names ``lever`` or ``plain``."""
    words = {w.strip().lower() for w in os.environ.get("LORA_DIFFUSION_STARTUP", "").split(",")}
    return "plain" in words or lever in words


def skip_unused_imports() -> list[str]:
    """Mark the unused optional packages absent (unless already imported); returns the names marked."""
    if _skipped("all-imports"):
        return []
    marked = [name for name in UNUSED_OPTIONAL_PACKAGES if name not in sys.modules]
    for name in marked:
        sys.modules[name] = None  # type: ignore[assignment]  # Python's own "import blocked" marker
    return marked


def restore_import(name: str) -> None:
    """Make ``name`` importable again if skip_unused_imports marked it absent (for our own direct use)."""
    if name in sys.modules and sys.modules[name] is None:
        del sys.modules[name]


def mark_process_start() -> None:
    """Record that this process is one command's run, so its jobs time themselves from the process's start
    (taken as the moment it began importing lora_diffusion: the interpreter's own ~50 ms come before)."""
    global _job_started_at
    from . import IMPORTED_AT

    _job_started_at = IMPORTED_AT


def job_started_at(default: float) -> float:
    """Wall-clock time a job started: its process's start under the CLI, else ``default`` (in-process calls)."""
    return _job_started_at if _job_started_at is not None else default


def describe_startup(marks: list[tuple[str, float]]) -> str:
    """One line from (phase, seconds since start at its end) marks: the total, then each phase's share."""
    parts, last = [], 0.0
    for name, at in marks:
        parts.append(f"{name} {at - last:.1f} s")
        last = at
    return f"first step {last:.1f} s after start: " + ", ".join(parts)


def _warm_gpu() -> None:
    import torch

    if not torch.cuda.is_available():
        return
    # the device this process will use: accelerate's launcher gives each process its LOCAL_RANK
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    # one small call of each library a training step needs loads it (cuDNN's engines, cuBLAS(Lt)'s
    # handles, the attention kernels); the driver context comes with the first allocation
    for dtype in (torch.bfloat16, torch.float16) if torch.cuda.is_bf16_supported() else (torch.float16,):
        x = torch.randn(1, 8, 16, 16, device=device, dtype=dtype)
        torch.nn.functional.conv2d(x, torch.randn(8, 8, 3, 3, device=device, dtype=dtype), padding=1)
        torch.nn.functional.group_norm(x, 4)
        a = torch.randn(1, 2, 16, 64, device=device, dtype=dtype)
        a @ a.transpose(-1, -2)
        torch.nn.functional.scaled_dot_product_attention(a, a, a)
    torch.cuda.synchronize(device)


def _warm_quietly() -> None:
    try:
        _warm_gpu()
    except Exception:  # noqa: BLE001 - the real set-up reports any GPU problem in its own words
        pass


def warm_gpu_in_background() -> None:
    """Start loading the GPU's context and libraries on a thread (no-op without CUDA or when plain)."""
    global _warmup
    if _skipped("no-gpu-warmup") or _warmup is not None:
        return
    _warmup = threading.Thread(target=_warm_quietly, name="gpu-warmup", daemon=True)
    _warmup.start()


def wait_for_gpu_warmup() -> None:
    """Block until the background warm-up (if any) is done, before the GPU is used for real."""
    if _warmup is not None:
        _warmup.join()

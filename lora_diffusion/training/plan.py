"""Settings that fit the base, the data and the machine: every key the user left unset is derived here.

A pure function of four facts — the user's config, what the base is (architecture, native size,
prediction type), how many images there are, and the device — plus a profile per base family
(``profiles/*.yaml``, also at ``configs/profiles/``). Whatever the user set always wins.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from ..models.precisions import QUANTIZED
from .config import DERIVED, TrainConfig
from .optimizers import kind_of

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
CPU_HOUR_S = 3600.0


@dataclass(frozen=True)
class BaseFacts:
    """What the derivation needs to know of a loaded base."""

    arch: str  # builtin / sd1 / sd2 / sdxl / custom
    native_resolution: int
    prediction_type: str = "epsilon"
    upscale_warning: bool = False  # the family warns when training above its native size
    graphable: bool = True  # the family's denoiser call fits the trainer's CUDA-graph replay

    @classmethod
    def of_pipeline(cls, pipe) -> "BaseFacts":
        from ..families import pipeline_configs

        return cls.of_configs(pipeline_configs(pipe))

    @classmethod
    def of_configs(cls, configs: dict[str, dict]) -> "BaseFacts":
        """From a base's component configs (``models/base_configs.py``), before or without loading it."""
        from ..families import family_of_configs

        family = family_of_configs(configs)
        prediction = str(configs.get("scheduler", {}).get("prediction_type", "epsilon"))
        return cls(family.name, family.native_resolution(configs), prediction, family.upscale_warning,
                   family.graphable)


@dataclass(frozen=True)
class DeviceFacts:
    """The training device: ``cpu`` or ``cuda`` (with its memory and bf16 support)."""

    kind: str = "cpu"
    memory_gib: float = 0.0
    bf16: bool = False
    name: str = "CPU"
    processes: int = 1  # data-parallel processes (accelerate's world size)

    @classmethod
    def detect(cls) -> "DeviceFacts":
        import torch
        from accelerate import PartialState

        # cpu=True on a machine without CUDA lets `torchrun --nproc_per_node N` run data-parallel over gloo
        state = PartialState(cpu=not torch.cuda.is_available())
        device, processes = state.device, state.num_processes
        if device.type != "cuda":
            return cls(device.type, 0.0, False, device.type.upper(), processes)
        props = torch.cuda.get_device_properties(device)
        return cls("cuda", props.total_memory / 1024**3, torch.cuda.is_bf16_supported(), props.name, processes)

    def describe(self) -> str:
        text = self.name if self.kind != "cuda" else f"{self.name}, {self.memory_gib:.0f} GiB"
        return text + (f", {self.processes} processes" if self.processes > 1 else "")


@dataclass
class Plan:
    """The complete settings, and for each derived key why it has its value."""

    config: TrainConfig
    profile: str
    reasons: dict[str, str] = field(default_factory=dict)  # derived key -> why
    explicit: list[str] = field(default_factory=list)  # keys the user set among the derivable ones
    warnings: list[str] = field(default_factory=list)

    def put(self, key: str, value: Any, reason: str) -> None:
        """Fill ``key`` with ``value`` (and say why) unless it is already set."""
        if getattr(self.config, key) is None:
            setattr(self.config, key, value)
            self.reasons[key] = reason

    def as_metadata(self) -> dict[str, Any]:
        return {"profile": self.profile, "derived": dict(self.reasons), "set_by_user": list(self.explicit)}

    def describe(self, images: int, device: DeviceFacts) -> str:
        """The block printed before training: chosen values, which were derived and why."""
        cfg = self.config
        lines = [f"plan: profile {self.profile} ({PROFILE_DIR.name}/{self.profile}.yaml), {images} images, "
                 f"{device.describe()}"]
        for key, why in self.reasons.items():
            lines.append(f"  {key} = {_show(getattr(cfg, key))}  ({why})")
        if self.explicit:
            lines.append("  set by you: " + ", ".join(f"{k} = {_show(getattr(cfg, k))}" for k in self.explicit))
        return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


@lru_cache(maxsize=None)
def load_profile(name: str) -> dict[str, Any]:
    """One profile as data (``profiles/NAME.yaml``)."""
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"no training profile {name!r}; the profiles are in {PROFILE_DIR}")
    return yaml.safe_load(path.read_text())


def profile_for(arch: str) -> str:
    """The training profile of family ``arch`` (the family module names it)."""
    from ..families import get

    return get(arch).profile


def default_precision(device: DeviceFacts) -> tuple[str, str]:
    """Mixed precision for ``device`` and why; needed before the base is loaded."""
    if device.kind == "cuda":
        return ("bf16", "GPU has bf16") if device.bf16 else ("fp16", "GPU has no bf16")
    return "no", "fp32 on the CPU"


def _gpu_row(rows: list[list[float]], memory_gib: float) -> Any:
    fitting = [value for min_gib, value in rows if memory_gib >= min_gib]
    return fitting[-1] if fitting else rows[0][1]


def plan_device(config: TrainConfig, device: DeviceFacts) -> Plan:
    """Phase one, before the base loads: a copy of ``config`` with its training dtype (``mixed_precision``) set."""
    cfg = dataclasses.replace(config)
    if cfg.resolution == 0:  # the UI's and older configs' way to say "the base's own size"
        cfg.resolution = None
    plan = Plan(cfg, "", explicit=[k for k in sorted(DERIVED) if getattr(cfg, k) is not None])
    if cfg.base_precision in ("bf16", "fp16"):  # a base stored in half precision is the training dtype
        if cfg.mixed_precision not in (None, cfg.base_precision):
            raise UserError(f"--base-precision {cfg.base_precision} with --mixed-precision {cfg.mixed_precision}: the "
                            "base is stored in the training dtype; give one of them, or the same value to both")
        plan.put("mixed_precision", cfg.base_precision, f"--base-precision {cfg.base_precision}")
    plan.put("mixed_precision", *default_precision(device))
    plan.put("cpu_threads", *cpu_threads(device))
    return plan


def busy_cores(samples: int = 5, gap_s: float = 0.04) -> float:
    """How many cores other programs keep busy right now: the kernel's count of runnable threads
    (``procs_running`` in /proc/stat, this reader's own thread taken off), the median of a few readings 40 ms
    apart. Not the load average: its minute-long memory still holds a finished install or build (README
    command 1's own install made the first run train on one core of two). Elsewhere, the 1-minute load average."""
    import statistics
    import time

    readings = []
    for i in range(samples):
        try:
            with open("/proc/stat") as stat:
                running = next(int(line.split()[1]) for line in stat if line.startswith("procs_running"))
        except (OSError, StopIteration, ValueError, IndexError):
            break
        readings.append(max(0, running - 1))
        if i + 1 < samples:
            time.sleep(gap_s)
    if readings:
        return float(statistics.median(readings))
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # Windows has no load average
        return 0.0


def free_cores(cores: int | None = None, busy: float | None = None) -> tuple[int, int, float]:
    """(cores other programs leave free, cores, cores they keep busy): this run has not started computing, so
    the work is theirs. At least one."""
    cores = cores or os.cpu_count() or 1
    busy = busy_cores() if busy is None else busy
    return max(1, cores - min(cores - 1, int(busy))), cores, busy


def cpu_threads(device: DeviceFacts) -> tuple[int, str]:
    """(torch threads, why). On the CPU: one per free core — threads that compete with other programs for a
    core make every step wait for the slowest (10-20× slower measured on a loaded 2-core machine). On a GPU the
    CPU only feeds it: torch's default."""
    import torch

    if device.kind != "cpu":
        return torch.get_num_threads(), "torch's default; the GPU does the work"
    free, cores, busy = free_cores()
    return free, f"{cores} cores, {busy:g} busy with other programs: {free} free"


def busy_machine_note(seconds_per_step: float, device: DeviceFacts, threads: int) -> str | None:
    """Why a CPU run may be slower than it should, when the machine got busier after the plan chose its threads."""
    if device.kind != "cpu":
        return None
    free, cores, busy = free_cores()
    if free >= threads:
        return None
    return (f"note: the machine got busier since the start ({busy:g} of {cores} cores busy with other programs): other "
            f"programs now share the {threads} core(s) this run uses, so steps ({seconds_per_step:.2f} s) are slower "
            f"than on an idle machine; --cpu-threads {free} suits the load now")


def complete_plan(plan: Plan, base: BaseFacts, images: int, device: DeviceFacts) -> Plan:
    """Phase two, once the base is loaded: every other key left ``None`` is filled, then every combination of
    settings is checked, once (``check_combinations``)."""
    name = profile_for(base.arch)
    profile = load_profile(name)
    plan.profile = name
    cfg, put = plan.config, plan.put
    on_gpu = device.kind == "cuda"
    put("resolution", base.native_resolution, f"the base's native size ({base.arch})")
    if cfg.resolution > base.native_resolution and base.upscale_warning:
        plan.warnings.append(
            f"--resolution {cfg.resolution} is above the built-in base's native {base.native_resolution} px: "
            f"each step costs about {(cfg.resolution / base.native_resolution) ** 2:.0f}x more and the base "
            f"never saw images that large; leave --resolution unset for {base.native_resolution}"
        )
    batch = profile["batch_size"]["cpu"] if not on_gpu else _gpu_row(profile["batch_size"]["cuda"], device.memory_gib)
    put("batch_size", batch, f"profile {name} on " + ("the CPU" if not on_gpu else f"a {device.memory_gib:.0f} GiB GPU"))
    rule = profile["steps"]
    seen = rule["image_passes"] * images
    wanted = round(seen / (cfg.batch_size * cfg.gradient_accumulation * device.processes))
    steps = min(max(wanted, rule["min"]), rule["max"])
    bound = "" if steps == wanted else f", kept in {rule['min']}..{rule['max']}"
    put("steps", steps, f"{rule['image_passes']} passes over {images} images at batch {cfg.batch_size}{bound}")
    _put_optimizer_rates(plan, profile, name)
    for key, value in profile["settings"].items():
        if key == "alpha" and "rank" in plan.explicit and "alpha" not in plan.explicit:
            # a rank the user chose keeps the profile's alpha/rank scale
            put("alpha", value / profile["settings"]["rank"] * cfg.rank, f"profile {name}'s alpha/rank scale")
        else:
            put(key, value, f"profile {name}")
    put("lr_warmup_steps", round(profile["lr_warmup_fraction"] * cfg.steps),
        f"{profile['lr_warmup_fraction']:g} of the steps")
    below = profile["gradient_checkpointing_below_gib"]
    put("gradient_checkpointing", bool(on_gpu and device.memory_gib < below),
        f"GPU has under {below} GiB" if on_gpu and device.memory_gib < below else "not needed for memory")
    _plan_compile(plan, profile, device)
    blocker = _cuda_graph_blocker(cfg, device, base.graphable)
    put("cuda_graphs", blocker is None, blocker or "the step is launch-bound; graphs are captured in seconds")
    check_combinations(cfg, device, base.graphable)
    return plan


def _put_optimizer_rates(plan: Plan, profile: dict, name: str) -> None:
    """The profile's learning rates are AdamW's: another optimizer gets the rate that suits it, and one that
    schedules itself a constant schedule."""
    kind, settings = kind_of(plan.config.optimizer), profile["settings"]
    for key in ("lr", "text_encoder_lr"):
        rate, why = kind.lr(settings[key])
        if why:
            plan.put(key, rate, f"--optimizer {plan.config.optimizer}: {why}")
    if kind.schedules_itself:
        if plan.config.lr_scheduler not in (None, "constant"):
            raise UserError(f"--optimizer {plan.config.optimizer} schedules the learning rate itself: leave "
                            f"--lr-scheduler unset (it is then constant), not {plan.config.lr_scheduler}")
        plan.put("lr_scheduler", "constant", f"--optimizer {plan.config.optimizer} schedules itself; its warm-up "
                                             "is lr_warmup_steps")


def derive_plan(config: TrainConfig, base: BaseFacts, images: int, device: DeviceFacts) -> Plan:
    """A copy of ``config`` with every ``None`` key filled in, and the reasons (both phases at once)."""
    return complete_plan(plan_device(config, device), base, images, device)


def _plan_compile(plan: Plan, profile: dict, device: DeviceFacts) -> None:
    cfg = plan.config
    if cfg.base_precision in QUANTIZED:
        plan.put("compile", False, f"the {cfg.base_precision} base is not compiled")
    long_run = profile["compile_from_steps"] and device.kind == "cuda" and cfg.steps >= profile["compile_from_steps"]
    plan.put("compile", bool(long_run), f"{cfg.steps} GPU steps repay the compile" if long_run else
             "a compile costs minutes; not repaid at this length or device")
    plan.put("compile_mode", "reduce-overhead" if cfg.compile else "default",
             "CUDA graphs" if cfg.compile else "no compile")


def check_combinations(cfg: TrainConfig, device: DeviceFacts, graphable: bool = True) -> None:
    """One error line for settings that cannot be used together; every key is filled when this runs."""
    if cfg.base_precision in QUANTIZED and cfg.dora:
        raise UserError(f"--dora with --base-precision {cfg.base_precision}: DoRA normalises the full-precision base "
                        "weight every step; train DoRA with --base-precision auto, or drop --dora")
    if cfg.base_precision in QUANTIZED and cfg.compile:
        raise UserError(f"--compile with --base-precision {cfg.base_precision}: the quantized weights are not compiled "
                        "here; drop --compile (CUDA graphs still apply)")
    if cfg.ema_decay and kind_of(cfg.optimizer).evaluation_weights:
        raise UserError(f"--ema-decay with --optimizer {cfg.optimizer}: it already writes an average of the weights; "
                        "drop --ema-decay")
    if cfg.compile and cfg.train_weight_min < 1:
        raise UserError("--compile with --train-weight-min below 1: the weight changes every step and would be "
                        "compiled again each time; drop one of them")
    blocker = _cuda_graph_blocker(cfg, device, graphable)
    if cfg.cuda_graphs and blocker:
        raise UserError(f"--cuda-graphs cannot be used here: {blocker}; leave --cuda-graphs unset or pass --no-cuda-graphs")


def _cuda_graph_blocker(cfg: TrainConfig, device: DeviceFacts, graphable: bool = True) -> str | None:
    """Why CUDA graphs of the denoiser's step cannot be used with these settings, or None."""
    if device.kind != "cuda":
        return "CUDA graphs need a CUDA GPU"
    if not graphable:
        return "this base family's denoiser runs eagerly"
    if cfg.train_weight_min < 1:
        return "train_weight_min changes the LoRA's weight every step"
    if cfg.compile:
        return "torch.compile is on (its reduce-overhead mode makes its own graphs)"
    if cfg.gradient_accumulation > 1:
        return "gradient accumulation runs eagerly"
    if cfg.train_text_encoder:
        return "text-encoder training runs eagerly"
    if cfg.mixed_precision == "fp16":
        return "fp16 runs eagerly (autocast with loss scaling)"
    return None


def long_cpu_run_advice(cfg: TrainConfig, seconds_per_step: float, device: DeviceFacts) -> str | None:
    """One warning line when a CPU run will take over an hour, with the flag that shortens it."""
    total = seconds_per_step * cfg.steps
    if device.kind != "cpu" or total <= CPU_HOUR_S:
        return None
    fit = max(1, int(CPU_HOUR_S * 0.9 / seconds_per_step))
    return (f"warning: this run will take about {format_duration(total)} on the CPU ({seconds_per_step:.1f} s/step); "
            f"--steps {fit} keeps it under an hour, a smaller --resolution makes each step faster, or use a GPU")


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"

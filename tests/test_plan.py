"""Settings derived from the base, the data and the device; explicit keys always win."""

import json
import re

import pytest
import yaml
from safetensors import safe_open

from lora_diffusion.cli.main import main
from lora_diffusion.training.config import DERIVED, TrainConfig, apply_values, field_types
from lora_diffusion.training.plan import (
    PROFILE_DIR,
    BaseFacts,
    DeviceFacts,
    derive_plan,
    load_profile,
    long_cpu_run_advice,
)

CPU = DeviceFacts()
H100 = DeviceFacts("cuda", 79.2, True, "NVIDIA H100 80GB HBM3")
SMALL_OLD_GPU = DeviceFacts("cuda", 8.0, False, "Quadro 8 GB")
BUILTIN = BaseFacts("builtin", 64, upscale_warning=True)


def _cfg(**values) -> TrainConfig:
    return TrainConfig(data="d", output="o.safetensors", **values)


def test_builtin_on_cpu_gets_the_measured_profile():
    plan = derive_plan(_cfg(), BUILTIN, 24, CPU)
    c = plan.config
    assert (c.resolution, c.batch_size, c.steps, c.rank, c.alpha, c.lr) == (64, 4, 600, 8, 8, 0.002)
    assert (c.lr_scheduler, c.lr_warmup_steps, c.min_snr_gamma, c.caption_dropout) == ("cosine", 15, 5.0, 0.1)
    assert c.targets == "attn-ff" and plan.reasons["targets"] == "profile builtin"
    assert (c.mixed_precision, c.gradient_checkpointing, c.compile, c.compile_mode) == ("no", False, False, "default")
    assert plan.profile == "builtin" and plan.explicit == [] and plan.warnings == []
    assert plan.reasons["steps"] == "100 passes over 24 images at batch 4"
    assert plan.reasons["resolution"] == "the base's native size (builtin)"
    assert set(plan.reasons) == DERIVED


@pytest.mark.parametrize("images, steps, why", [
    (2, 200, "100 passes over 2 images at batch 4, kept in 200..800"),
    (10, 250, "100 passes over 10 images at batch 4"),
    (500, 800, "100 passes over 500 images at batch 4, kept in 200..800"),
])
def test_steps_follow_the_number_of_images_within_the_profile_bounds(images, steps, why):
    plan = derive_plan(_cfg(), BUILTIN, images, CPU)
    assert plan.config.steps == steps and plan.reasons["steps"] == why


def test_sd1_from_a_real_tiny_pipeline_on_cpu():
    from lora_diffusion.models.tiny import tiny_pipeline

    facts = BaseFacts.of_pipeline(tiny_pipeline("sd1"))
    assert facts == BaseFacts("sd1", 32, "epsilon")
    c = derive_plan(_cfg(), facts, 24, CPU).config
    assert (c.resolution, c.batch_size, c.steps, c.rank, c.alpha, c.lr) == (32, 1, 2400, 16, 8, 1e-4)
    assert c.targets == "attn"


def test_sd2_v_on_an_h100_batches_up_and_replays_cuda_graphs_without_compiling():
    base = BaseFacts("sd2", 768, "v_prediction")
    short = derive_plan(_cfg(), base, 24, H100)
    c = short.config
    assert (c.resolution, c.batch_size, c.steps, c.mixed_precision, c.compile, c.cuda_graphs) == (
        768, 4, 600, "bf16", False, True)
    assert short.profile == "sd2"
    assert short.reasons["cuda_graphs"] == "the step is launch-bound; graphs are captured in seconds"
    long = derive_plan(_cfg(), base, 100, H100).config
    assert (long.steps, long.compile, long.cuda_graphs) == (2500, False, True)


def test_sdxl_on_an_h100_uses_batch_4_and_cuda_graphs_without_checkpointing():
    plan = derive_plan(_cfg(), BaseFacts("sdxl", 1024), 24, H100)
    c = plan.config
    assert (c.resolution, c.batch_size, c.steps, c.mixed_precision, c.bucketing) == (1024, 4, 600, "bf16", True)
    assert (c.gradient_checkpointing, c.compile, c.cuda_graphs, c.rank, c.alpha) == (False, False, True, 16, 8)


@pytest.mark.parametrize("setting, reason", [
    (dict(compile=True), "torch.compile is on (its reduce-overhead mode makes its own graphs)"),
    (dict(train_text_encoder=True), "text-encoder training runs eagerly"),
    (dict(gradient_accumulation=2), "gradient accumulation runs eagerly"),
    (dict(train_weight_min=0.5), "train_weight_min changes the LoRA's weight every step"),
])
def test_cuda_graphs_step_aside_for_settings_that_need_an_eager_step(setting, reason):
    plan = derive_plan(_cfg(**setting), BaseFacts("sdxl", 1024), 24, H100)
    assert plan.config.cuda_graphs is False and plan.reasons["cuda_graphs"] == reason
    two_gpus = DeviceFacts("cuda", 79.2, True, "NVIDIA H100 80GB HBM3", processes=2)
    assert derive_plan(_cfg(), BaseFacts("sdxl", 1024), 24, two_gpus).config.cuda_graphs is True  # own grad sync


def test_a_flux_base_never_gets_cuda_graphs_and_a_changing_weight_is_not_compiled():
    flux = BaseFacts("flux", 1024, graphable=False)
    plan = derive_plan(_cfg(), flux, 24, H100)
    assert plan.config.cuda_graphs is False and plan.reasons["cuda_graphs"] == "this base family's denoiser runs eagerly"
    with pytest.raises(Exception, match=r"^--compile with --train-weight-min below 1: the weight changes every step"):
        derive_plan(_cfg(compile=True, train_weight_min=0.5), flux, 24, H100)


def test_cuda_graphs_forced_where_they_cannot_run_is_one_clear_error():
    assert derive_plan(_cfg(), BUILTIN, 24, CPU).config.cuda_graphs is False
    with pytest.raises(Exception, match=r"^--cuda-graphs cannot be used here: CUDA graphs need a CUDA GPU; leave "
                                        r"--cuda-graphs unset or pass --no-cuda-graphs$"):
        derive_plan(_cfg(cuda_graphs=True), BUILTIN, 24, CPU)


def test_sdxl_on_a_small_gpu_without_bf16():
    from lora_diffusion.models.tiny import tiny_pipeline

    assert BaseFacts.of_pipeline(tiny_pipeline("sdxl")).arch == "sdxl"
    plan = derive_plan(_cfg(), BaseFacts("sdxl", 1024), 40, SMALL_OLD_GPU)
    c = plan.config
    assert (c.resolution, c.batch_size, c.mixed_precision, c.gradient_checkpointing, c.bucketing) == (
        1024, 1, "fp16", True, True)
    assert c.steps == 3000 and plan.reasons["mixed_precision"] == "GPU has no bf16"
    assert c.cuda_graphs is False and plan.reasons["cuda_graphs"] == "fp16 runs eagerly (autocast with loss scaling)"
    assert plan.reasons["gradient_checkpointing"] == "GPU has under 16 GiB"


def test_every_explicit_key_wins_and_rank_keeps_the_profile_scale():
    explicit = dict(resolution=128, steps=10, rank=4, lr=3e-4, batch_size=2, mixed_precision="no",
                    lr_scheduler="constant", min_snr_gamma=0.0, caption_dropout=0.0, compile=False)
    plan = derive_plan(_cfg(**explicit), BaseFacts("sd1", 512), 24, H100)
    for key, value in explicit.items():
        assert getattr(plan.config, key) == value, key
        assert key not in plan.reasons
    assert plan.explicit == sorted(explicit)
    assert plan.config.alpha == 2.0 and plan.reasons["alpha"] == "profile sd1's alpha/rank scale"
    # the user's own object is not changed
    assert _cfg(**explicit).alpha is None


def test_every_key_can_be_handed_back_with_auto():
    cfg = apply_values(_cfg(), {"steps": "auto", "mixed-precision": "auto", "resolution": 0, "rank": 4}, "--set")
    assert (cfg.steps, cfg.mixed_precision, cfg.resolution, cfg.rank) == (None, None, None, 4)
    with pytest.raises(Exception, match=r"^--rank must be an integer or auto, got 'abc'$"):
        apply_values(_cfg(), {"rank": "abc"}, "command line")


def test_builtin_above_native_size_is_a_warning():
    plan = derive_plan(_cfg(resolution=512), BUILTIN, 24, CPU)
    assert plan.warnings == [
        "--resolution 512 is above the built-in base's native 64 px: each step costs about 64x more and the "
        "base never saw images that large; leave --resolution unset for 64"
    ]


def test_a_cpu_run_over_an_hour_says_so_and_names_the_flag():
    cfg = derive_plan(_cfg(), BaseFacts("sd1", 512), 24, CPU).config
    assert long_cpu_run_advice(cfg, 11.7, CPU) == (
        "warning: this run will take about 7 h 48 min on the CPU (11.7 s/step); --steps 276 keeps it under an "
        "hour, a smaller --resolution makes each step faster, or use a GPU"
    )
    assert long_cpu_run_advice(cfg, 1.0, CPU) is None
    assert long_cpu_run_advice(cfg, 11.7, H100) is None


@pytest.mark.parametrize("name", sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
def test_profiles_are_valid_data(name):
    profile = load_profile(name)
    assert set(profile) == {"applies_to", "settings", "lr_warmup_fraction", "batch_size", "steps",
                            "gradient_checkpointing_below_gib", "compile_from_steps"}
    assert set(profile["settings"]) <= DERIVED
    types = field_types()
    for key, value in profile["settings"].items():
        assert isinstance(value, (types[key], int) if types[key] is float else types[key]), key
    assert profile["steps"]["min"] <= profile["steps"]["max"]
    # the profiles are also readable where users look for configs
    assert yaml.safe_load((PROFILE_DIR.parents[2] / "configs" / "profiles" / f"{name}.yaml").read_text()) == profile


def test_cli_prints_the_plan_and_records_it_in_the_metadata(tiny_base, tmp_path, capsys):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (32, 32), (200, 40 * i, 40)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"a red square {i}")
    out = tmp_path / "o.safetensors"
    assert main(["train", "--data", str(tmp_path), "--output", str(out), "--base", tiny_base, "--steps", "30",
                 "--rank", "2"]) == 0
    err = capsys.readouterr().err
    assert "plan: profile sd1 (profiles/sd1.yaml), 3 images, CPU\n" in err
    assert "  resolution = 32  (the base's native size (sd1))\n" in err
    assert "  batch_size = 1  (profile sd1 on the CPU)\n" in err
    assert "  alpha = 1  (profile sd1's alpha/rank scale)\n" in err
    assert "  set by you: rank = 2, steps = 30\n" in err
    # after 3 untimed warm-up steps, at least 3 timed steps and 5 s, or 20 steps
    # durations print as "42 s", "1 min 05 s" or "1 h 02 min" (format_duration): a slow machine must not fail this
    duration = r"(\d+ s|\d+ min \d\d s|\d+ h \d\d min)"
    assert re.search(rf"[\r\n]estimate: {duration} to go \(\d+\.\d\d s/step over steps 4-(\d+); first step {duration} after start\)\n", err)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    plan = json.loads(meta["lora_diffusion.plan"])
    assert plan["profile"] == "sd1" and plan["set_by_user"] == ["rank", "steps"]
    assert plan["derived"]["resolution"] == "the base's native size (sd1)"
    training = json.loads(meta["lora_diffusion.training"])
    assert (training["resolution"], training["rank"], training["alpha"], training["steps"]) == (32, 2, 1.0, 30)
    assert meta["ss_resolution"] == "(32, 32)"


@pytest.mark.parametrize("name", ["quickstart.yaml", "sd15-gpu.yaml", "sd2-v-768.yaml", "sdxl-gpu.yaml"])
def test_every_shipped_config_is_valid_and_sdxl_gpu_keeps_sdxl_settings(name):
    from pathlib import Path

    from lora_diffusion.training.config import load_yaml

    path = Path(__file__).parent.parent / "configs" / name
    cfg = apply_values(_cfg(), load_yaml(path), str(path))
    cfg.validate()
    if name == "sdxl-gpu.yaml":
        plan = derive_plan(cfg, BaseFacts("sdxl", 1024), 40, H100).config
        assert (plan.resolution, plan.bucketing, plan.batch_size, plan.cuda_graphs, plan.train_text_encoder) == (
            1024, True, 4, True, False)


def test_cpu_threads_follow_the_cores_other_programs_leave_free(monkeypatch):
    """A loaded machine trains 10-20x slower with a thread per core than with a thread per free core: the plan
    counts the cores other programs keep busy now, says so, and a run that finds the machine busier later says why
    it is slow."""
    import os

    import lora_diffusion.training.plan as plan
    from lora_diffusion.training.plan import DeviceFacts, busy_machine_note, cpu_threads, free_cores

    assert free_cores(cores=2, busy=0.0) == (2, 2, 0.0)
    assert free_cores(cores=2, busy=1.0) == (1, 2, 1.0)
    assert free_cores(cores=8, busy=30.0) == (1, 8, 30.0)  # never none
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(plan, "busy_cores", lambda: 2.0)
    cpu = DeviceFacts("cpu")
    assert cpu_threads(cpu) == (2, "4 cores, 2 busy with other programs: 2 free")
    assert busy_machine_note(1.5, cpu, threads=2) is None
    monkeypatch.setattr(plan, "busy_cores", lambda: 3.0)
    assert busy_machine_note(1.5, cpu, threads=2) == (
        "note: the machine got busier since the start (3 of 4 cores busy with other programs): other programs now "
        "share the 2 core(s) this run uses, so steps (1.50 s) are slower than on an idle machine; --cpu-threads 1 "
        "suits the load now")


def test_busy_cores_reads_the_run_queue_now_not_the_minute_average(monkeypatch, tmp_path):
    """Right after README command 1's install the 1-minute load average still reads ~1 on an idle 2-core machine:
    the plan reads how many threads are runnable now (the median of a few readings, its own taken off)."""
    import builtins
    import os

    import lora_diffusion.training.plan as plan

    monkeypatch.undo()  # conftest's idle machine: this test reads the real function
    monkeypatch.setattr(os, "getloadavg", lambda: (1.7, 1.0, 0.5))
    readings = iter([1, 3, 1, 2, 1])
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/stat":
            stat = tmp_path / "stat"
            stat.write_text(f"cpu  1 2 3\nprocs_running {next(readings)}\nprocs_blocked 0\n")
            return real_open(stat, *args, **kwargs)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    assert plan.busy_cores(gap_s=0) == 0.0  # readings 0, 2, 0, 1, 0 after our own: median 0

    def no_proc(path, *args, **kwargs):
        if path == "/proc/stat":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    assert plan.busy_cores(gap_s=0) == 1.7  # no /proc (macOS): the load average


def test_the_printed_plan_names_the_thread_count_it_chose(monkeypatch):
    import os

    import lora_diffusion.training.plan as plan_module
    from lora_diffusion.training.config import TrainConfig
    from lora_diffusion.training.plan import DeviceFacts, plan_device

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(plan_module, "busy_cores", lambda: 1.0)
    plan = plan_device(TrainConfig(data="d", output="o.safetensors"), DeviceFacts("cpu"))
    assert plan.config.cpu_threads == 1
    assert plan.reasons["cpu_threads"] == "2 cores, 1 busy with other programs: 1 free"
    assert plan_device(TrainConfig(data="d", output="o.safetensors", cpu_threads=2), DeviceFacts("cpu")).config.cpu_threads == 2


def test_flux_and_sd3_plans_fit_an_80_gb_card():
    """FLUX.1 at 1024 px without gradient checkpointing does not fit 80 GB (the peers' trackers; Replicate turns it
    on below 100 GB): on an H100 the derived plan trains one image per step with checkpointing."""
    for family in ("flux", "sd3"):
        plan = derive_plan(_cfg(), BaseFacts(family, 1024, graphable=False), 24, H100)
        assert (plan.config.batch_size, plan.config.gradient_checkpointing) == (1, True), family
        assert plan.reasons["gradient_checkpointing"].startswith("GPU has under ")

"""Train one LoRA: load base → freeze → inject → data → optimizer → loop → validate → save.

Reads top to bottom like its description; the step math is in ``objective.py``,
resumable state in ``checkpoint.py``, data in ``lora_diffusion.data``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from .. import __version__
from ..adapters.apply import components_architecture, pipeline_components, save_adapter
from ..data.dataset import TrainingData, require_examples
from ..data.folder import scan_folder
from ..data.hub import load_hub_examples, looks_like_hub_id
from ..data.prefetch import Prefetcher, default_workers
from ..errors import Interrupted, UserError
from ..lora.config import LoraConfig
from ..lora.inject import inject_adapter, parameter_report
from ..models.base_precision import QUANTIZED, check_base_precision, quantize_frozen
from ..models.loading import load_pipeline
from ..safe_write import atomic_write
from ..startup import describe_startup, job_started_at, wait_for_gpu_warmup
from ..writable import writable_file
from .checkpoint import changed_settings, find_checkpoint, load_checkpoint, save_checkpoint
from .conditioning import conditioning_for
from .config import TrainConfig, to_dict
from .cuda_graphs import GraphedUNet
from .encoders import Encoders, encode_pass_batch
from .grad_sync import average_gradients
from .lean_activations import lean_feed_forwards
from .objective import Share, denoising_loss
from .plan import BaseFacts, DeviceFacts, Plan, default_precision, derive_plan, format_duration, long_cpu_run_advice

ADAPTER = "lora"
UNTIMED_STEPS = 3  # warm-up steps left out of the duration estimate


@dataclass
class TrainResult:
    output: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    skipped: list = field(default_factory=list)
    skipped_steps: int = 0  # updates skipped for a NaN/inf loss or gradient (nan_policy: skip)
    peak_gib: float | None = None  # peak GPU memory allocated by this process (CUDA only)
    first_step_s: float | None = None  # from the start (of the process, under the CLI) to the first step done


def _paths(cfg: TrainConfig) -> tuple[Path, Path, Path]:
    output = Path(cfg.output)
    stem = output.with_suffix("")
    checkpoints = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else stem.parent / f"{stem.name}-checkpoints"
    logs = Path(cfg.log_dir) if cfg.log_dir else stem.parent / f"{stem.name}-logs"
    return output, checkpoints, logs


def load_examples(cfg: TrainConfig, cache: Path):
    if looks_like_hub_id(cfg.data):
        examples, skipped = load_hub_examples(cfg.data, cache), []
        examples = [e if e.caption else type(e)(e.path, cfg.caption or cfg.trigger_word, e.repeats) for e in examples]
        return [e for e in examples if e.caption], skipped
    scan = scan_folder(cfg.data, cfg.caption, cfg.trigger_word, cfg.caption_extension)
    for path, reason in scan.skipped:
        print(f"warning: skipping {path}: {reason}", file=sys.stderr)
    return scan.examples, scan.skipped


def _step_generator(seed: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    """The step's own random stream, on the training device (no host-to-device copies of noise):
    a step's randomness depends only on (seed, step, micro-batch), so resumed runs match, and every
    process draws the same global-batch noise and keeps its own rows (objective.Share)."""
    generator = torch.Generator(device=device) if device.type == "cuda" else torch.Generator()
    return generator.manual_seed((seed * 1_000_003 + step * 101 + micro * 7) % (2**63 - 1))


def _make_optimizer(cfg: TrainConfig, groups, device: torch.device):
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes (or use --set optimizer=adamw)") from None
        return bnb.optim.AdamW8bit(groups, weight_decay=cfg.weight_decay)
    fused = device.type == "cuda"  # the fused kernel exists on CUDA only
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=fused)


def _cast_lora_fp32(model) -> None:
    # mixed precision keeps frozen weights in half precision but trains the adapter in fp32
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()


def _base_precision_sets_dtype(cfg: TrainConfig) -> TrainConfig:
    """``--base-precision bf16|fp16`` is the training dtype: it fills --mixed-precision or must agree with it."""
    if cfg.base_precision not in ("bf16", "fp16"):
        return cfg
    if cfg.mixed_precision not in (None, cfg.base_precision):
        raise UserError(f"--base-precision {cfg.base_precision} with --mixed-precision {cfg.mixed_precision}: the base is "
                        f"stored in the training dtype; give one of them, or the same value to both")
    return dataclasses.replace(cfg, mixed_precision=cfg.base_precision)


def train(cfg: TrainConfig, *, progress: bool = True, on_step: Callable[[dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Run one training job as configured; returns where the adapter went and the losses."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    cfg.validate()
    started = time.time()
    job_t0 = job_started_at(default=started)
    startup = [("imports", started - job_t0)]  # (phase, seconds since the job started at its end)
    writable_file(cfg.output, "--output")
    output, checkpoint_dir, log_dir = _paths(cfg)
    # the data folder is scanned (no image decoded) before any model loads: a typo costs a second
    examples, skipped = load_examples(cfg, checkpoint_dir / "hub-data")
    require_examples(examples, skipped)
    images = sum(e.repeats for e in examples)
    wait_for_gpu_warmup()
    device = DeviceFacts.detect()
    cfg = _base_precision_sets_dtype(cfg)
    precision = cfg.mixed_precision or default_precision(device)[0]
    # bf16 runs the frozen base in bf16 with no autocast (fp32 adapter weights, cast per LoRA layer):
    # autocast would run every GroupNorm in fp32 and keep fp32 activations, +15-25% memory on SDXL.
    # fp16 keeps accelerate's autocast and loss scaling, which fp16's narrow range needs.
    accelerator = Accelerator(mixed_precision="fp16" if precision == "fp16" else "no",
                              gradient_accumulation_steps=cfg.gradient_accumulation, cpu=device.kind == "cpu")
    main = accelerator.is_main_process
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    check_base_precision(cfg.base_precision, accelerator.device, dora=cfg.dora, compile=bool(cfg.compile))

    # 1. the base model, frozen; then every setting the user left open is derived
    pipe = load_pipeline(cfg.base, dtype=weight_dtype, allow_pickle=cfg.allow_pickle)
    startup.append(("base loaded", time.time() - job_t0))
    conditioning = conditioning_for(pipe, cfg.base)
    plan = derive_plan(cfg, BaseFacts.of_pipeline(pipe), images, device)
    cfg = plan.config
    if main and progress:
        print(plan.describe(images, device), file=sys.stderr)
    if main:
        for warning in plan.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    unet, vae = pipe.unet, pipe.vae
    text_encoders = conditioning.encoders  # kohya role -> network: {"te"} or SDXL's {"te1", "te2"}
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    # the UNet joins the device only after the data is prepared (step 3), so an up-front encode pass
    # and the training steps never hold all the models at once
    for model in (unet, vae, *text_encoders.values()):
        model.requires_grad_(False)
    for model in text_encoders.values():
        model.to(accelerator.device)
    # SD and SDXL VAEs overflow in fp16 (their force_upcast flag records it): fp32 then; bf16 has fp32's
    # range, and encoding in bf16 keeps uncacheable runs (random crops) from waiting on an fp32 VAE
    fp16_unsafe = weight_dtype == torch.float16 and getattr(vae.config, "force_upcast", True)
    vae.to(accelerator.device, dtype=torch.float32 if fp16_unsafe else weight_dtype)
    resolution = cfg.resolution
    startup.append(("encoders to the device", time.time() - job_t0))

    # 2. LoRA in the UNet (and the text encoders), the only trainable weights
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(rank=cfg.rank, alpha=cfg.alpha, init=cfg.init, dropout=cfg.lora_dropout, network=cfg.network,
                      dora=cfg.dora, factor=cfg.lokr_factor)
    inject_adapter(unet, ADAPTER, lora, cfg.targets)
    trained = {"unet": unet}
    if cfg.train_text_encoder:
        for role, model in text_encoders.items():
            inject_adapter(model, ADAPTER, lora, cfg.text_targets, kind="text")
            trained[role] = model
    for model in trained.values():
        _cast_lora_fp32(model)
    lean_feed_forwards(unet)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            for model in text_encoders.values():
                model.gradient_checkpointing_enable()
    if main and progress:
        print(parameter_report(unet, *text_encoders.values()), file=sys.stderr)
    if main and accelerator.num_processes > 1:
        print(f"data-parallel on {accelerator.num_processes} processes ({accelerator.device.type})", file=sys.stderr)

    # 3. data
    data = TrainingData(examples, resolution, crop=cfg.crop, flip=cfg.flip, bucketing=cfg.bucketing,
                        caption_shuffle=cfg.caption_shuffle, keep_tokens=cfg.keep_tokens,
                        caption_dropout=cfg.caption_dropout, seed=cfg.seed, skipped=skipped)
    cache_latents = cfg.cache != "off" and data.deterministic
    cache_text = cfg.cache != "off" and data.fixed_captions and not cfg.train_text_encoder
    encoders = Encoders(vae, conditioning, accelerator.device, cache_latents, cache_text)
    if cfg.offload_encoders == "on" and not (cache_latents and cache_text):
        raise UserError(
            "offload_encoders needs cached latents and captions: no random crop, no caption shuffle, "
            "no text-encoder training, and cache not 'off' (or set offload_encoders: auto)"
        )
    if cfg.offload_encoders == "on" or (cfg.offload_encoders == "auto" and cache_latents and cache_text
                                        and accelerator.device.type == "cuda"):
        encoders.encode_all(data, encode_pass_batch(cfg.batch_size, resolution))
        # every latent and text state is cached now: the VAE and text encoders leave the GPU
        for model in (vae, *text_encoders.values()):
            model.to("cpu")
        if accelerator.device.type == "cuda":
            torch.cuda.empty_cache()
    if cfg.base_precision in QUANTIZED:
        count = quantize_frozen(unet, cfg.base_precision, accelerator.device)
        te_count = sum(quantize_frozen(model, cfg.base_precision, accelerator.device) for model in text_encoders.values()
                       if model.device.type == accelerator.device.type)  # offloaded encoders stay off the GPU as they are
        if main and progress:
            print(f"base precision: {cfg.base_precision} for {count} frozen Linear layers of the UNet and {te_count} of "
                  f"the text encoders (torchao, weight-only); convolutions and the LoRA stay "
                  f"{precision if precision != 'no' else 'fp32'}", file=sys.stderr)
    unet.to(accelerator.device)

    # 4. optimizer and schedule
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": cfg.lr}]
    if cfg.train_text_encoder:
        te_params = [p for model in text_encoders.values() for p in model.parameters() if p.requires_grad]
        groups.append({"params": te_params, "lr": cfg.text_encoder_lr})
    optimizer = _make_optimizer(cfg, groups, accelerator.device)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=cfg.steps)
    # frozen text encoders are not prepared: accelerate would move offloaded ones back to the GPU
    trained_te = list(text_encoders) if cfg.train_text_encoder else []
    # CUDA graphs bypass DDP's backward hooks: with several processes the UNet stays unwrapped and the
    # loop averages the adapter's gradients itself (grad_sync.py)
    own_sync = bool(cfg.cuda_graphs) and accelerator.num_processes > 1
    *models, optimizer, lr_scheduler = accelerator.prepare(
        *(() if own_sync else (unet,)), *(text_encoders[r] for r in trained_te), optimizer, lr_scheduler)
    unet_p, te_p = (unet, models) if own_sync else (models[0], models[1:])
    # the loop calls the prepared (under multi-GPU: gradient-synchronised) text encoders
    conditioning.encoders = text_encoders | dict(zip(trained_te, te_p))
    if cfg.compile:
        # the LoRA layers' side paths are plain module calls, so the UNet compiles whole; the first
        # steps pay the compile time (reported separately by the benchmarks)
        unet_p = torch.compile(unet_p, mode=cfg.compile_mode)
    step_unet = GraphedUNet(unet_p) if cfg.cuda_graphs else unet_p

    start_step = 0
    if cfg.resume:
        found = find_checkpoint(cfg.resume, checkpoint_dir)
        if found is not None:
            start_step = load_checkpoint(found, trained, optimizer, lr_scheduler)
            if main:
                print(f"resumed from {found} at step {start_step}", file=sys.stderr)
                changes = changed_settings(found, to_dict(cfg))
                if changes:
                    print(f"warning: {found.name} was made with other settings ({'; '.join(changes)}); the run "
                          "goes on with the new ones: pass the old values to continue it exactly", file=sys.stderr)
        elif main:
            print(f"no checkpoint in {checkpoint_dir} yet; starting from step 0", file=sys.stderr)
    if start_step >= cfg.steps and output.exists():
        return TrainResult(output, start_step, [], 0.0, data.skipped)

    if main:
        log_dir.mkdir(parents=True, exist_ok=True)
    tracker = _tensorboard(log_dir) if main else None
    jsonl = (log_dir / "train_log.jsonl").open("a") if main else None
    settings = to_dict(cfg)

    startup.append(("data and set-up", time.time() - job_t0))

    # 5. the loop
    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = cfg.batch_size * world  # the global batch, split across processes
    # the number of batches per epoch does not depend on the shuffle, so it is computed once
    batches_per_epoch = max(1, len(data.batches(0, per_step)))
    epoch_batches: dict[int, list[list[int]]] = {}

    def batch_for(micro_index: int) -> tuple[list[int], int, Share]:
        """This process's part of the global batch, its epoch, and where the part sits in the batch."""
        epoch, position = divmod(micro_index, batches_per_epoch)
        if epoch not in epoch_batches:
            if len(epoch_batches) > 1:  # the current epoch and the next (looked at by the prefetcher)
                del epoch_batches[min(epoch_batches)]
            epoch_batches[epoch] = data.batches(epoch, per_step)
        batch = epoch_batches[epoch][position]
        each = math.ceil(len(batch) / world)
        # a bucket's last batch may be short: a process left without rows repeats the last one
        start = min(rank * each, len(batch) - 1)
        stop = max(start + 1, min(len(batch), start + each))
        return batch[start:stop], epoch, Share(start, len(batch))

    # uncached pixels (random crops, cache off) are made on worker threads a few batches ahead
    prefetch = (Prefetcher(lambda key: data.pixels(*key), default_workers())
                if accelerator.device.type == "cuda" and not cache_latents else None)
    ahead = 4

    def pixels_for(epoch: int) -> Callable:
        if prefetch is None:
            return lambda key: data.pixels(key[0], epoch, key[1])
        return lambda key: prefetch.get((key[0], epoch, key[1]))

    def prefetch_after(micro_index: int) -> None:
        for later in range(micro_index + 1, min(micro_index + 1 + ahead, cfg.steps * cfg.gradient_accumulation)):
            later_indices, later_epoch, _ = batch_for(later)
            prefetch.want((i, later_epoch, data.placement(i, later_epoch).flipped) for i in later_indices)

    # uncached latents: the next batch is encoded while this step runs (Encoders.stage)
    lookahead = not cache_latents
    total_micro = cfg.steps * cfg.gradient_accumulation

    def stage_after(micro_index: int) -> None:
        if lookahead and micro_index + 1 < total_micro:
            next_indices, next_epoch, _ = batch_for(micro_index + 1)
            keys = [(i, data.placement(i, next_epoch).flipped) for i in next_indices]
            encoders.stage(keys, pixels_for(next_epoch))

    bar = _progress(cfg.steps, start_step, enabled=progress and main)
    if isinstance(step_unet, GraphedUNet) and main and progress:
        step_unet.report = lambda text: _note(bar, text)
    losses: list[float] = []
    unet_p.train()
    for model in te_p:
        model.train()
    step = start_step
    params = [p for g in groups for p in g["params"]]
    bad_in_a_row = skipped_steps = 0
    completed = start_step  # steps whose update is fully applied (what a Ctrl-C checkpoint holds)
    first_step_done: float | None = None
    timed_from, estimate_due = None, True
    try:
        for step in range(start_step, cfg.steps):
            loss_sum = None
            bad = False
            for micro in range(cfg.gradient_accumulation):
                micro_index = step * cfg.gradient_accumulation + micro
                indices, epoch, share = batch_for(micro_index)
                if prefetch is not None:
                    prefetch_after(micro_index)
                generator = _step_generator(cfg.seed, step, micro, accelerator.device)
                with accelerator.accumulate(unet_p):
                    places = [data.placement(i, epoch) for i in indices]  # one crop/flip draw per sample
                    latents = encoders.latent_batch([(i, p.flipped) for i, p in zip(indices, places)],
                                                    pixels_for(epoch), generator, share)
                    captions = [data.caption(i, epoch) for i in indices]
                    geometries = [data.geometry(i, epoch, p) for i, p in zip(indices, places)]
                    states, added = encoders.unet_conditioning(captions, geometries, cfg.train_text_encoder)
                    with accelerator.autocast():
                        loss = denoising_loss(step_unet, noise_scheduler, latents.to(weight_dtype), states, generator,
                                              added_cond_kwargs=added, min_snr_gamma=cfg.min_snr_gamma,
                                              noise_offset=cfg.noise_offset, share=share)
                    accelerator.backward(loss)
                    if own_sync and accelerator.sync_gradients:
                        average_gradients(params, accelerator.num_processes)
                    mean_loss = accelerator.gather(loss.detach()).mean().float()
                    loss_sum = mean_loss if loss_sum is None else loss_sum + mean_loss
                    if accelerator.sync_gradients:
                        # the norm is over gradients already averaged across processes, so every rank
                        # decides alike; fp16's grad scaler handles overflowing gradients by itself
                        norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
                        checked = [loss_sum]
                        if cfg.mixed_precision != "fp16" and norm is not None:
                            checked.append(norm.float().reshape(()).to(loss_sum.device))
                        # the step's one host sync; the next batch's encode queues behind it
                        values = _read_after(torch.stack(checked), lambda: stage_after(micro_index))
                        bad = not all(math.isfinite(v) for v in values)
                        if not bad:
                            optimizer.step()
                            lr_scheduler.step()
                    else:
                        stage_after(micro_index)
                    optimizer.zero_grad(set_to_none=True)
            step_loss = values[0] / cfg.gradient_accumulation
            done = step + 1
            if bad:
                bad_in_a_row += 1
                skipped_steps += 1
                if cfg.nan_policy == "stop" or bad_in_a_row >= cfg.max_bad_steps:
                    why = "" if cfg.nan_policy == "stop" else f" for {bad_in_a_row} steps in a row"
                    raise UserError(
                        f"loss or gradients became NaN/inf at step {done}{why}; stopped (the last checkpoint is kept). "
                        "Lower --lr, use --mixed-precision bf16 or no, or set nan_policy: skip"
                    )
                if main:
                    print(f"warning: step {done}: NaN/inf loss or gradient; update skipped", file=sys.stderr)
                    jsonl.write(json.dumps({"step": done, "loss": None, "skipped": "non-finite loss or gradient"}) + "\n")
                completed = done
                continue
            bad_in_a_row = 0
            completed = done
            losses.append(step_loss)
            if done == start_step + 1:
                first_step_done = time.time()
                startup.append(("first step", first_step_done - job_t0))
                if main and progress:
                    _note(bar, describe_startup(startup))
            if done == start_step + UNTIMED_STEPS:
                timed_from = (done, time.time())  # lazy set-up, autotuning and allocator growth are over
            elif main and estimate_due and timed_from and done > timed_from[0]:
                timed, seconds = done - timed_from[0], time.time() - timed_from[1]
                if (timed >= 3 and seconds >= 5) or timed >= 20:
                    estimate_due = False
                    step_seconds = seconds / timed
                    if progress:
                        _note(bar, f"estimate: {format_duration(step_seconds * (cfg.steps - done))} to go "
                                   f"({step_seconds:.2f} s/step over steps {timed_from[0] + 1}-{done}; "
                                   f"first step {format_duration(first_step_done - job_t0)} after start)")
                    advice = long_cpu_run_advice(cfg, step_seconds, device)
                    if advice:
                        _note(bar, advice)
            lr_now = lr_scheduler.get_last_lr()[0]
            if main:
                record = {"step": done, "loss": step_loss, "lr": lr_now, "time": round(time.time() - started, 3)}
                jsonl.write(json.dumps(record) + "\n")
                jsonl.flush()
                if tracker:
                    tracker.add_scalar("train/loss", step_loss, done)
                    tracker.add_scalar("train/lr", lr_now, done)
                if on_step:
                    on_step(record | {"steps": cfg.steps, "elapsed": time.time() - started})
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr_now:.2e}")
            stop = bool(should_stop and should_stop())
            if main and cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or stop) and done < cfg.steps:
                save_checkpoint(checkpoint_dir, done, trained, optimizer, lr_scheduler, settings, cfg.checkpoints_to_keep)
                _test_crash_hook(done)
            if main and cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps:
                _save(cfg, plan, pipe, output.with_name(f"{output.stem}-step{done:06d}.safetensors"), done, data, started)
            if main and cfg.sample_every and done % cfg.sample_every == 0:
                _validation_grid(cfg, pipe, data, log_dir / "samples" / f"step_{done:06d}.png", resolution)
                unet_p.train()
            if stop:
                break
            _test_interrupt_hook(done)
    except KeyboardInterrupt:
        bar.close()  # the message below gets a line of its own
        if not main or completed == start_step:
            raise Interrupted("interrupted before any step finished; nothing was saved") from None
        where = save_checkpoint(checkpoint_dir, completed, trained, optimizer, lr_scheduler, settings,
                                cfg.checkpoints_to_keep)
        partial = output.with_name(f"{output.stem}-partial-step{completed:06d}.safetensors")
        _save(cfg, plan, pipe, partial, completed, data, started, _curve(losses, start_step))
        raise Interrupted(f"interrupted after step {completed} of {cfg.steps}: wrote the partial LoRA {partial} "
                          f"and the checkpoint {where}; continue with --resume latest") from None
    finally:
        if prefetch is not None:
            prefetch.close()
    bar.close()
    accelerator.wait_for_everyone()
    if main:
        _save_or_rescue(output, checkpoint_dir,
                        lambda path: _save(cfg, plan, pipe, path, step + 1, data, started, _curve(losses, start_step)))
        if cfg.sample_every:
            _validation_grid(cfg, pipe, data, log_dir / "samples" / "final.png", resolution)
        jsonl.close()
        if tracker:
            tracker.close()
    peak = torch.cuda.max_memory_allocated() / 2**30 if accelerator.device.type == "cuda" else None
    first = None if first_step_done is None else first_step_done - job_t0
    return TrainResult(output, step + 1, losses, time.time() - started, data.skipped, skipped_steps, peak, first)


def _curve(losses: list[float], start_step: int) -> list[tuple[int, float]]:
    """(step, loss) of this process's steps, thinned to what an adapter's metadata keeps."""
    from .curves import thin

    return thin([(start_step + 1 + i, round(float(v), 6)) for i, v in enumerate(losses)])


def _save_or_rescue(output: Path, checkpoint_dir: Path, save: Callable[[Path], None]) -> None:
    """Write the finished LoRA; if ``output`` cannot be written (a full disk, a read-only folder), the trained
    weights are still in memory: write them beside the checkpoints or in the temp folder, and say where."""
    try:
        save(output)
        return
    except UserError as error:
        what = str(error).split(". Free disk space")[0]  # "could not write X (why); any earlier file … unchanged"
    for folder in (Path(checkpoint_dir), Path(tempfile.gettempdir())):
        rescue = folder / output.name
        if rescue.resolve() == output.resolve():
            continue
        try:
            save(rescue)
        except UserError:
            continue
        raise UserError(f"{what}; the trained LoRA was written to {rescue} instead (move it where you want it)") from None
    raise UserError(f"{what}; nor could it be written beside the checkpoints or in the temp folder: free disk space "
                    "and run again with --resume latest") from None


def _save(cfg: TrainConfig, plan: Plan, pipe, path: Path, steps: int, data: TrainingData, started: float,
          curve: list[tuple[int, float]] = ()) -> None:
    components = pipeline_components(pipe)
    arch = components_architecture(components)
    if not cfg.train_text_encoder:
        for role in ("te", "te1", "te2"):
            components.pop(role, None)
    settings = to_dict(cfg)
    if not cfg.record_paths:  # no absolute paths from the user's machine unless asked
        settings["data"] = Path(cfg.data).name
        for key in ("output", "checkpoint_dir", "log_dir", "resume"):
            settings[key] = Path(settings[key]).name if settings[key] else ""
        if os.path.isabs(cfg.base) or os.sep in cfg.base:
            settings["base"] = Path(cfg.base).name
    summary = data.summary.as_metadata() | {"skipped": len(data.skipped)}
    metadata = {
        "lora_diffusion.training": settings,
        "lora_diffusion.dataset": summary,
        "lora_diffusion.plan": plan.as_metadata(),
        "ss_steps": steps,
        "ss_num_train_images": data.summary.examples,
        "ss_learning_rate": cfg.lr,
        "ss_text_encoder_lr": cfg.text_encoder_lr if cfg.train_text_encoder else 0,
        "ss_resolution": f"({cfg.resolution}, {cfg.resolution})",
        "ss_seed": cfg.seed,
        "ss_output_name": path.stem,
        "ss_training_finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ss_training_time_s": round(time.time() - started, 1),
        "ss_network_train_unet_only": str(not cfg.train_text_encoder),
        "lora_diffusion.trainer": f"lora-diffusion {__version__}",
    }
    if cfg.trigger_word:
        metadata["lora_diffusion.trigger_words"] = [cfg.trigger_word]
    if curve:  # the Library shows it beside the LoRA, wherever the file goes
        metadata["lora_diffusion.loss_curve"] = [list(point) for point in curve]
    save_adapter(path, components, ADAPTER, dtype=cfg.save_dtype, base=arch, metadata=metadata)


@torch.no_grad()
def _validation_grid(cfg: TrainConfig, pipe, data: TrainingData, path: Path, resolution: int) -> None:
    from PIL import Image

    prompts = cfg.validation_prompts or list(dict.fromkeys(e.caption for e in data.items))[:4]
    device = pipe.unet.device
    models = (pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None))
    offloaded = [m for m in models if m is not None and m.device != device]
    for model in offloaded:  # offload_encoders moved them off the GPU; sampling needs them back briefly
        model.to(device)
    try:
        images = pipe(prompts, num_inference_steps=cfg.validation_steps, height=resolution, width=resolution,
                      generator=torch.Generator().manual_seed(cfg.seed)).images
    finally:
        for model in offloaded:
            model.to("cpu")
    grid = Image.new("RGB", (resolution * len(images), resolution))
    for i, image in enumerate(images):
        grid.paste(image, (i * resolution, 0))
    with atomic_write(path) as tmp:
        grid.save(tmp, format="PNG")


def _note(bar, text: str) -> None:
    """A line of its own above the progress bar (never glued to it)."""
    bar.write(text, file=sys.stderr) if not bar.disable else print(text, file=sys.stderr)


def _tensorboard(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir / "tensorboard"))


def _read_after(values: torch.Tensor, work: Callable[[], None]) -> list[float]:
    """``values.tolist()`` with ``work`` done meanwhile; on a GPU, ``work``'s kernels queue behind the copy
    of ``values``, so the host waits for the step only, and the GPU is not idle while the host catches up."""
    if values.device.type != "cuda":
        work()
        return values.tolist()
    host = values.to("cpu", non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    work()
    copied.synchronize()
    return host.tolist()


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)


def _test_interrupt_hook(step: int) -> None:
    # Tests simulate Ctrl-C right after a step, in a real CLI process.
    if os.environ.get("LORA_DIFFUSION_TEST_INTERRUPT_AT_STEP") == str(step):
        raise KeyboardInterrupt


def _test_crash_hook(step: int) -> None:
    # Tests simulate a kill -9 right after a checkpoint: exit at once, no cleanup.
    if os.environ.get("LORA_DIFFUSION_TEST_CRASH_AT_STEP") == str(step):
        os._exit(137)

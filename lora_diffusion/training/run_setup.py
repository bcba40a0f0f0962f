"""Everything a training run holds, built once before the first step: data scanned, the plan, the frozen base on
its device, LoRA injected, the step's inputs (with their caches), the optimizer and accelerate's handles."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from ..data.dataset import TrainingData, require_examples
from ..data.dataset_config import DatasetConfig, Subset, load_dataset_config
from ..data.folder import Example, scan_folder
from ..data.hub import load_hub_examples, looks_like_hub_id
from ..data.masks import masked_loss_mode
from ..errors import UserError
from ..families import family_of
from ..lora.config import LoraConfig
from ..lora.blocks import block_value, parse_blocks, unmatched
from ..lora.inject import base_modules, inject_adapter, lora_layers, parameter_report
from ..models.base_precision import QUANTIZED, check_quantization_available, quantize_frozen
from ..models.loading import load_pipeline
from ..startup import job_started_at, wait_for_gpu_warmup
from ..writable import writable_file
from .ema import LoraEma
from .checkpoint import changed_settings, checkpoint_curve, find_checkpoint, load_checkpoint, save_checkpoint
from .conditioning import conditioning_for
from .config import TrainConfig, to_dict
from .cuda_graphs import GraphedUNet
from .lean_activations import lean_feed_forwards
from .optimizers import make_optimizer
from .plan import BaseFacts, DeviceFacts, Plan, complete_plan, plan_device
from .sample_prompts import parse_sample_prompts
from .step_inputs import StepInputs, encode_pass_batch
from .trackers import trackers_for
from .validation_loss import ValidationLoss, split_examples, validation_interval

ADAPTER = "lora"  # the adapter name LoRA layers hold the trained side path under
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class RunPaths:
    """Where the run writes: the adapter file, its checkpoints folder and its logs folder."""

    output: Path
    checkpoints: Path
    logs: Path

    @classmethod
    def of(cls, cfg: TrainConfig) -> "RunPaths":
        output = Path(cfg.output)
        stem = output.with_suffix("")
        checkpoints = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else stem.parent / f"{stem.name}-checkpoints"
        logs = Path(cfg.log_dir) if cfg.log_dir else stem.parent / f"{stem.name}-logs"
        return cls(output, checkpoints, logs)


@dataclass
class Clock:
    """When the job started (the process, under the CLI), when training set-up started, and each set-up phase."""

    started: float
    job_t0: float
    phases: list[tuple[str, float]] = field(default_factory=list)  # (phase, seconds since the job started at its end)

    @classmethod
    def start(cls) -> "Clock":
        started = time.time()
        job_t0 = job_started_at(default=started)
        return cls(started, job_t0, [("imports", started - job_t0)])

    def mark(self, phase: str) -> float:
        now = time.time()
        self.phases.append((phase, now - self.job_t0))
        return now


@dataclass
class Denoiser:
    """The one denoiser, by the three roles it plays: ``model`` holds the LoRA and is saved; ``prepared`` is
    accelerate's handle (gradient-synchronised under several processes); ``forward`` is what the step calls
    (``prepared``, compiled and/or replayed as CUDA graphs)."""

    model: torch.nn.Module
    prepared: torch.nn.Module
    forward: Callable


@dataclass
class RunState:
    """A run's settings and live objects, as set-up leaves them for the loop."""

    cfg: TrainConfig
    plan: Plan
    device: DeviceFacts
    accelerator: object
    pipe: object
    objective: object  # the family's: .loss(denoiser, latents, states, generator, ...)
    weight_dtype: torch.dtype
    denoiser: Denoiser
    trained: dict[str, torch.nn.Module]  # role (unet, te, te1, te2) -> the module whose LoRA is trained
    trained_text: list[torch.nn.Module]  # accelerate's handles on the trained text encoders
    data: TrainingData
    inputs: StepInputs
    optimizer: object
    lr_scheduler: object
    params: list[torch.nn.Parameter]
    own_sync: bool  # several processes with CUDA graphs: the loop averages gradients itself
    paths: RunPaths
    clock: Clock
    images: int
    start_step: int = 0
    prior_curve: list = field(default_factory=list)  # (step, loss) before a resume, from its checkpoint
    ema: LoraEma | None = None  # the average the files are written from (--ema-decay)
    validation: ValidationLoss | None = None  # the held-out images' loss (--validation-split), main process only
    sample_prompts: list = field(default_factory=list)  # --sample-prompts, parsed (SamplePrompt)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def save_checkpoint(self, step: int, curve: list | None = None) -> Path:
        return save_checkpoint(self.paths.checkpoints, step, self.trained, self.optimizer, self.lr_scheduler,
                               to_dict(self.cfg), self.cfg.checkpoints_to_keep, curve,
                               self.ema.state() if self.ema is not None else None)

    def train_mode(self) -> None:
        self.denoiser.prepared.train()
        for model in self.trained_text:
            model.train()


def dataset_of(cfg: TrainConfig) -> DatasetConfig | None:
    """``--dataset-config``'s subsets, its run-level keys (resolution, batch size, bucketing) taken where ``cfg``
    leaves them to the plan; None without one."""
    if not cfg.dataset_config:
        return None
    dataset = load_dataset_config(cfg.dataset_config)
    for key, value in dataset.settings.items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    return dataset


def load_examples(cfg: TrainConfig, cache: Path, dataset: DatasetConfig | None = None):
    """The examples (image, caption, repeats) of ``cfg.data`` — a folder or a hub dataset — or of each subset of
    ``dataset``, and skipped files."""
    if dataset is not None:
        examples, skipped = [], []
        for number, subset in enumerate(dataset.subsets):
            scan = scan_folder(subset.folder, subset.caption or cfg.caption, subset.trigger_word or cfg.trigger_word,
                               subset.caption_extension)
            examples += [Example(e.path, e.caption, e.repeats * subset.repeats, number) for e in scan.examples]
            skipped += scan.skipped
        for path, reason in skipped:
            print(f"warning: skipping {path}: {reason}", file=sys.stderr)
        return examples, skipped
    if looks_like_hub_id(cfg.data):
        examples, skipped = load_hub_examples(cfg.data, cache), []
        examples = [e if e.caption else type(e)(e.path, cfg.caption or cfg.trigger_word, e.repeats) for e in examples]
        return [e for e in examples if e.caption], skipped
    scan = scan_folder(cfg.data, cfg.caption, cfg.trigger_word, cfg.caption_extension)
    for path, reason in scan.skipped:
        print(f"warning: skipping {path}: {reason}", file=sys.stderr)
    return scan.examples, scan.skipped


def subset_shares(dataset: DatasetConfig, examples: list) -> str:
    """The printed lines: each subset's images, repeats and share of an epoch."""
    total = sum(e.repeats for e in examples) or 1
    lines = []
    for number, subset in enumerate(dataset.subsets):
        own = [e for e in examples if e.subset == number]
        seen = sum(e.repeats for e in own)
        kind = "regularization" if subset.is_reg else "training"
        lines.append(f"  subset {number + 1}: {subset.folder} ({kind}): {len(own)} images × {subset.repeats} repeats "
                     f"= {seen} per epoch, {100 * seen / total:.0f}% of it")
    if dataset.ignored:
        lines.append(f"  kohya keys read and not used here: {', '.join(dataset.ignored)}")
    return "dataset config:\n" + "\n".join(lines)


@dataclass
class ScannedData:
    """What the data scan found before any model loads."""

    dataset: DatasetConfig | None  # --dataset-config's subsets
    examples: list  # the training examples
    skipped: list
    held_out: list  # --validation-split's examples
    masked: bool  # --masked-loss, resolved
    alpha_masks: bool
    masks_found: str  # the line that says which masks were found ("" without)


def _scan_data(cfg: TrainConfig, paths: RunPaths, progress: bool) -> ScannedData:
    """The data's examples (captioned first with --auto-caption), split and masks resolved; the sample-prompt file
    checked — every mistake in them found before a model loads."""
    dataset = dataset_of(cfg)
    if cfg.auto_caption:
        _auto_caption(cfg, dataset, progress)
    examples, skipped = load_examples(cfg, paths.checkpoints / "hub-data", dataset)
    require_examples(examples, skipped)
    examples, held_out = split_examples(examples, cfg.validation_split, cfg.seed)
    masked, alpha_masks, found = masked_loss_mode(cfg.masked_loss, [e.path for e in examples])
    if cfg.sample_prompts:
        _sample_prompts(cfg, 512)
    return ScannedData(dataset, examples, skipped, held_out, masked, alpha_masks, found)


def set_up(cfg: TrainConfig, progress: bool, on_plan: Callable[[Plan, str], None] | None = None) -> RunState:
    """Everything before the first step, in the order that keeps a mistake cheap: files, plan, models, data.
    ``on_plan`` hears the plan and its printed block as soon as it is derived."""
    from accelerate import Accelerator

    cfg.validate()
    clock = Clock.start()
    writable_file(cfg.output, "--output")
    paths = RunPaths.of(cfg)
    # the data folder is scanned (no image decoded) before any model loads: a typo costs a second
    scan = _scan_data(cfg, paths, progress)
    dataset, examples, skipped, held_out = scan.dataset, scan.examples, scan.skipped, scan.held_out
    images = sum(e.repeats for e in examples)
    wait_for_gpu_warmup()
    device = DeviceFacts.detect()
    plan = plan_device(cfg, device)
    torch.set_num_threads(plan.config.cpu_threads)
    precision = plan.config.mixed_precision
    # bf16 runs the frozen base in bf16 with no autocast (fp32 adapter weights, cast per LoRA layer):
    # autocast would run every GroupNorm in fp32 and keep fp32 activations, +15-25% memory on SDXL.
    # fp16 keeps accelerate's autocast and loss scaling, which fp16's narrow range needs.
    trackers = trackers_for(cfg.log_with)
    accelerator = Accelerator(mixed_precision="fp16" if precision == "fp16" else "no",
                              gradient_accumulation_steps=cfg.gradient_accumulation, cpu=device.kind == "cpu",
                              log_with=trackers or None, project_dir=str(paths.logs))
    check_quantization_available(cfg.base_precision, accelerator.device)
    weight_dtype = DTYPES[precision]

    pipe = load_pipeline(cfg.base, dtype=weight_dtype, allow_pickle=cfg.allow_pickle)
    clock.mark("base loaded")
    family = family_of(pipe)
    conditioning = conditioning_for(pipe, cfg.base)
    plan = complete_plan(plan, BaseFacts.of_pipeline(pipe), images, device)
    cfg = plan.config
    main = accelerator.is_main_process
    described = plan.describe(images, device)
    if main and progress:
        print(described, file=sys.stderr)
    if main and on_plan:
        on_plan(plan, described)
    if main:
        for warning in plan.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    model = getattr(pipe, family.denoiser)
    text_encoders = conditioning.encoders  # kohya role -> network: {"te"} or SDXL's {"te1", "te2"}
    objective = family.objective(pipe)
    objective.configure(cfg.timestep_sampling, cfg.discrete_flow_shift, cfg.train_guidance)
    _place_frozen(model, pipe.vae, text_encoders, accelerator.device, weight_dtype)
    clock.mark("encoders to the device")

    if cfg.reg_generate:
        dataset = _add_class_images(cfg, pipe, accelerator, dataset, examples, main and progress)
    trainable_text = {role: text_encoders[role] for role in family.text_encoders if role in text_encoders}
    trained = _inject_lora(cfg, model, trainable_text, family.target_presets)
    if main and progress:
        print(parameter_report(model, *text_encoders.values()), file=sys.stderr)
    if main and accelerator.num_processes > 1:
        print(f"data-parallel on {accelerator.num_processes} processes ({accelerator.device.type})", file=sys.stderr)

    if scan.masks_found and main and progress:
        print(scan.masks_found, file=sys.stderr)
    if dataset is not None and main and progress:
        print(subset_shares(dataset, examples), file=sys.stderr)
    data = TrainingData(examples, cfg.resolution, crop=cfg.crop, flip=cfg.flip, bucketing=cfg.bucketing,
                        caption_shuffle=cfg.caption_shuffle, keep_tokens=cfg.keep_tokens,
                        caption_dropout=cfg.caption_dropout, seed=cfg.seed, skipped=skipped, masked=scan.masked,
                        alpha_masks=scan.alpha_masks, subsets=dataset.subsets if dataset else None)
    # held-out images are encoded now, while the encoders are still on the device
    validation = (ValidationLoss(held_out, cfg, pipe.vae, conditioning, accelerator.device, cfg.train_text_encoder)
                  if held_out and main else None)
    if validation and progress:
        print(f"validation: {validation.images} of {validation.images + images} images held out; their loss every "
              f"{validation_interval(cfg.validation_every, cfg.steps)} steps (fixed noise)", file=sys.stderr)
    inputs = _step_inputs(cfg, data, pipe.vae, conditioning, text_encoders, accelerator.device)
    _quantize_base(cfg, model, text_encoders, accelerator.device, precision, main and progress)
    model.to(accelerator.device)

    optimizer, lr_scheduler, params = _optimizer(cfg, model, trainable_text, accelerator.device)
    denoiser, trained_text, optimizer, lr_scheduler = _prepare(cfg, accelerator, model, text_encoders, trainable_text,
                                                               conditioning, optimizer, lr_scheduler)
    run = RunState(cfg, plan, device, accelerator, pipe, objective, weight_dtype, denoiser, trained, trained_text,
                   data, inputs, optimizer, lr_scheduler, params, accelerator.num_processes > 1 and bool(cfg.cuda_graphs),
                   paths, clock, images)
    run.ema = LoraEma(params, cfg.ema_decay) if cfg.ema_decay else None
    run.validation = validation
    run.sample_prompts = _sample_prompts(cfg, cfg.resolution) if cfg.sample_prompts else []
    run.start_step = _resume(run)
    return run


def _add_class_images(cfg: TrainConfig, pipe, accelerator, dataset: DatasetConfig | None, examples: list,
                      report: bool) -> DatasetConfig:
    """``--reg-generate``: the class images (made by the base now, before any LoRA, when missing; by the main
    process, the others waiting) joined to the examples as a regularization subset; a plain --data folder becomes
    subset 1."""
    from ..data.class_images import class_image_folder, make_class_images
    from ..families import generation_defaults_of_base

    dataset = dataset or DatasetConfig([Subset(cfg.data)], {}, [])
    if accelerator.is_main_process:
        defaults = generation_defaults_of_base(cfg.base)
        pipe.to(accelerator.device)
        make_class_images(pipe, cfg, defaults.steps, defaults.cfg, report)
    accelerator.wait_for_everyone()
    subset = Subset(str(class_image_folder(cfg)), is_reg=True)
    number = len(dataset.subsets)
    dataset.subsets.append(subset)
    scan = scan_folder(subset.folder, cfg.class_prompt)
    examples += [Example(e.path, e.caption, 1, number) for e in scan.examples]
    return dataset


def _auto_caption(cfg: TrainConfig, dataset: DatasetConfig | None, progress: bool) -> None:
    """``--auto-caption``: a caption beside every image of the data folder(s) that has none, made with
    ``--caption-model`` before the base loads (the captioner is freed first), long for bases whose text encoder
    reads long captions."""
    from ..data.captioner import detail_for, load_captioner
    from ..data.captioning import CaptionOptions, caption_folder, images_to_caption
    from ..families import family_of_base

    folders = [(s.folder, s.caption_extension) for s in dataset.subsets] if dataset else [(cfg.data, cfg.caption_extension)]
    todo = {ext: images_to_caption(folder, CaptionOptions(extension=ext))[0] for folder, ext in folders
            if not looks_like_hub_id(folder)}
    count = sum(len(paths) for paths in todo.values())
    if not count:
        return
    try:
        family = family_of_base(cfg.base)
    except UserError:
        family = None
    detail = detail_for(family.name if family else None)
    captioner = load_captioner(cfg.caption_model, max_new_tokens=256 if detail == "long" else 77)
    for extension, paths in todo.items():
        caption_folder(paths, lambda images: captioner.caption(images, detail), CaptionOptions(extension=extension),
                       batch_size=8 if captioner.device.type == "cuda" else 2, progress=progress)
    print(f"auto-caption: {count} images captioned with {cfg.caption_model} ({detail}), written beside them",
          file=sys.stderr)
    captioner.model.to("cpu")  # the GPU is the trainer's from here
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sample_prompts(cfg: TrainConfig, size: int) -> list:
    """The ``--sample-prompts`` file's prompts, options left out taking the run's size, steps, seed and CFG."""
    from ..generation.defaults import DEFAULT_CFG

    return parse_sample_prompts(cfg.sample_prompts, size=size, steps=cfg.validation_steps, seed=cfg.seed,
                                cfg_scale=DEFAULT_CFG)


def _place_frozen(model, vae, text_encoders: dict, device: torch.device, weight_dtype: torch.dtype) -> None:
    """Freeze the base; the text encoders and the VAE go to the device now, the denoiser once the data is ready
    (so an up-front encode pass and the training steps never hold all the models at once)."""
    for module in (model, vae, *text_encoders.values()):
        module.requires_grad_(False)
    for module in text_encoders.values():
        module.to(device)
    # SD and SDXL VAEs overflow in fp16 (their force_upcast flag records it): fp32 then; bf16 has fp32's
    # range, and encoding in bf16 keeps uncacheable runs (random crops) from waiting on an fp32 VAE
    fp16_unsafe = weight_dtype == torch.float16 and getattr(vae.config, "force_upcast", True)
    vae.to(device, dtype=torch.float32 if fp16_unsafe else weight_dtype)


def _inject_lora(cfg: TrainConfig, model, text_encoders: dict, presets) -> dict[str, torch.nn.Module]:
    """LoRA into the denoiser (and the family's LoRA-able text encoders when asked): the only trainable weights,
    kept in fp32."""
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(rank=cfg.rank, alpha=cfg.alpha, init=cfg.init, dropout=cfg.lora_dropout, network=cfg.network,
                      dora=cfg.dora, factor=cfg.lokr_factor)
    inject_adapter(model, ADAPTER, lora, cfg.targets, presets=presets, module_config=_block_configs(cfg, model, lora))
    trained = {"unet": model}
    if cfg.train_text_encoder:
        for role, encoder in text_encoders.items():
            inject_adapter(encoder, ADAPTER, lora, cfg.text_targets, kind="text")
            trained[role] = encoder
    for module in trained.values():
        # mixed precision keeps frozen weights in half precision but trains the adapter in fp32
        for p in module.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    lean_feed_forwards(model)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            for encoder in text_encoders.values():
                encoder.gradient_checkpointing_enable()
    return trained


def _block_configs(cfg: TrainConfig, model, lora: LoraConfig):
    """``--block-lr``/``--block-ranks``: each module's LoRA config (its block's rank, the run's alpha),
    None for a block left untrained; None when neither is given."""
    if not cfg.block_lr and not cfg.block_ranks:
        return None
    lr_entries, rank_entries = block_entries(cfg)
    paths = [path for path, _ in base_modules(model)]
    for flag, entries in (("--block-lr", lr_entries), ("--block-ranks", rank_entries)):
        missing = unmatched(entries, paths)
        if missing:
            raise UserError(f"{flag}: block {missing[0]!r} matches no module of this base's denoiser; its blocks are "
                            f"named like {', '.join(dict.fromkeys('.'.join(p.split('.')[:2]) for p in paths[:200]))}")

    def config_for(path: str) -> LoraConfig | None:
        rank = int(block_value(path, rank_entries, lora.rank))
        if block_value(path, lr_entries, 1.0) == 0 or rank == 0:
            return None
        # one alpha for every module, as kohya's block_dims with its default block_alphas: diffusers' loader reads
        # a single alpha for a whole file (measured: per-module alphas were dropped there)
        return lora if rank == lora.rank else replace(lora, rank=rank, alpha=lora.effective_alpha)

    return config_for


def block_entries(cfg: TrainConfig) -> tuple[list, list]:
    """(learning-rate weight entries, rank entries) of ``--block-lr`` and ``--block-ranks``."""
    return (parse_blocks(cfg.block_lr, "--block-lr") if cfg.block_lr else [],
            parse_blocks(cfg.block_ranks, "--block-ranks", int) if cfg.block_ranks else [])


def _step_inputs(cfg: TrainConfig, data: TrainingData, vae, conditioning, text_encoders: dict,
                 device: torch.device) -> StepInputs:
    """The step's input maker with the caches the data allows; on a GPU with everything cached, the VAE and text
    encoders encode everything up front and leave the GPU."""
    cache_latents = cfg.cache != "off" and data.deterministic
    cache_text = cfg.cache != "off" and data.fixed_captions and not cfg.train_text_encoder
    inputs = StepInputs(vae, conditioning, device, cache_latents, cache_text)
    if cfg.offload_encoders == "on" and not (cache_latents and cache_text):
        raise UserError(
            "offload_encoders needs cached latents and captions: no random crop, no caption shuffle, "
            "no text-encoder training, and cache not 'off' (or set offload_encoders: auto)"
        )
    if cfg.offload_encoders == "on" or (cfg.offload_encoders == "auto" and cache_latents and cache_text
                                        and device.type == "cuda"):
        inputs.encode_all(data, encode_pass_batch(cfg.batch_size, cfg.resolution))
        for model in (vae, *text_encoders.values()):
            model.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return inputs


def _quantize_base(cfg: TrainConfig, model, text_encoders: dict, device: torch.device, precision: str,
                   report: bool) -> None:
    if cfg.base_precision not in QUANTIZED:
        return
    count = quantize_frozen(model, cfg.base_precision, device)
    te_count = sum(quantize_frozen(encoder, cfg.base_precision, device) for encoder in text_encoders.values()
                   if encoder.device.type == device.type)  # offloaded encoders stay off the GPU as they are
    if report:
        print(f"base precision: {cfg.base_precision} for {count} frozen Linear layers of the UNet and {te_count} of "
              f"the text encoders (torchao, weight-only); convolutions and the LoRA stay "
              f"{precision if precision != 'no' else 'fp32'}", file=sys.stderr)


def _denoiser_groups(cfg: TrainConfig, model) -> list[dict]:
    """The denoiser's LoRA weights as optimizer groups: one at ``lr``, or one per ``--block-lr`` weight."""
    lr_entries = block_entries(cfg)[0]
    if not lr_entries:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr}]
    by_weight: dict[float, list] = {}
    for path, layer in lora_layers(model).items():
        params = [p for p in layer.parameters() if p.requires_grad]
        by_weight.setdefault(block_value(path, lr_entries, 1.0), []).extend(params)
    return [{"params": params, "lr": cfg.lr * weight, "block_lr_weight": weight}
            for weight, params in sorted(by_weight.items())]


def _optimizer(cfg: TrainConfig, model, text_encoders: dict, device: torch.device):
    """The optimizer over the LoRA weights (the text encoders' at their own rate), its schedule, and the weights."""
    from diffusers.optimization import get_scheduler

    groups = _denoiser_groups(cfg, model)
    if cfg.train_text_encoder:
        te_params = [p for encoder in text_encoders.values() for p in encoder.parameters() if p.requires_grad]
        groups.append({"params": te_params, "lr": cfg.text_encoder_lr})
    optimizer = make_optimizer(cfg, groups, device)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=cfg.steps)
    return optimizer, lr_scheduler, [p for g in groups for p in g["params"]]


def _prepare(cfg: TrainConfig, accelerator, model, text_encoders: dict, trainable_text: dict, conditioning, optimizer,
             lr_scheduler):
    """accelerate's handles on what trains: the denoiser's three roles, the trained text encoders, the optimizer
    and its schedule."""
    # frozen text encoders are not prepared: accelerate would move offloaded ones back to the GPU
    trained_te = list(trainable_text) if cfg.train_text_encoder else []
    # CUDA graphs bypass DDP's backward hooks: with several processes the denoiser stays unwrapped and the
    # loop averages the adapter's gradients itself (grad_sync.py)
    own_sync = bool(cfg.cuda_graphs) and accelerator.num_processes > 1
    *handles, optimizer, lr_scheduler = accelerator.prepare(
        *(() if own_sync else (model,)), *(text_encoders[r] for r in trained_te), optimizer, lr_scheduler)
    prepared, trained_text = (model, handles) if own_sync else (handles[0], handles[1:])
    # the loop calls the prepared (under multi-GPU: gradient-synchronised) text encoders
    conditioning.encoders = text_encoders | dict(zip(trained_te, trained_text))
    if cfg.compile:
        # the LoRA layers' side paths are plain module calls, so the denoiser compiles whole; the first
        # steps pay the compile time (reported separately by the benchmarks)
        prepared = torch.compile(prepared, mode=cfg.compile_mode)
    forward = GraphedUNet(prepared) if cfg.cuda_graphs else prepared
    return Denoiser(model, prepared, forward), list(trained_text), optimizer, lr_scheduler


def _resume_threads(run: RunState, checkpoint: Path) -> None:
    """A resumed run computes with the thread count its checkpoint was made with (it changes float rounding), unless
    ``--cpu-threads`` says otherwise."""
    import json

    if "cpu_threads" in run.plan.explicit or run.device.kind != "cpu":
        return
    saved = json.loads((checkpoint / "trainer.json").read_text()).get("settings", {}).get("cpu_threads")
    if isinstance(saved, int) and saved > 0 and saved != run.cfg.cpu_threads:
        run.cfg.cpu_threads = saved
        run.plan.reasons["cpu_threads"] = f"as in {checkpoint.name} (the same rounding as the run it continues)"
        torch.set_num_threads(saved)
        if run.main:
            print(f"cpu_threads = {saved}, as in {checkpoint.name}: the resumed steps round as the first ones did",
                  file=sys.stderr)


def _resume(run: RunState) -> int:
    """The step a ``--resume`` run continues from (its checkpoint loaded), or 0."""
    cfg = run.cfg
    if not cfg.resume:
        return 0
    found = find_checkpoint(cfg.resume, run.paths.checkpoints)
    if found is None:
        if run.main:
            print(f"no checkpoint in {run.paths.checkpoints} yet; starting from step 0", file=sys.stderr)
        return 0
    start_step = load_checkpoint(found, run.trained, run.optimizer, run.lr_scheduler, run.ema)
    _resume_threads(run, found)
    run.prior_curve = [point for point in checkpoint_curve(found) if point[0] <= start_step]
    if run.main:
        print(f"resumed from {found} at step {start_step}", file=sys.stderr)
        changes = changed_settings(found, to_dict(cfg))
        if changes:
            print(f"warning: {found.name} was made with other settings ({'; '.join(changes)}); the run "
                  "goes on with the new ones: pass the old values to continue it exactly", file=sys.stderr)
    return start_step

"""The Gradio page: Generate (blend LoRAs with sliders; PNG info; a weight-grid Compare), Train (from
uploads, with a live loss curve), Library (preview cards, trigger words, files and facts).

Everything the page does goes through the same engines as the CLI: ``GenerationEngine`` (pipelines
and adapters stay loaded, so moving a slider reloads nothing), ``TrainingJob`` (one background run)
and ``LoraLibrary`` (bare names only, so no request can reach outside the LoRA folder).
Errors reach the page as one-line messages; file metadata is shown as plain text only.
"""

from __future__ import annotations

import json
import random
import sys
import threading
from pathlib import Path

from ..errors import UserError
from ..generation.defaults import DEFAULT_CFG, DEFAULT_SAMPLER, DEFAULT_STEPS
from ..generation.schedulers import sampler_names
from ..training.config import TrainConfig
from ..training.curves import curve_rows, thin
from .jobs import TrainingJob
from .library import LoraLibrary, loss_curve, trigger_words

# the Train tab's settings: the config keys (the CLI's flags) with their labels; each defaults to "auto"
TRAIN_FIELDS = {"rank": "Rank", "alpha": "Alpha", "steps": "Steps", "lr": "Learning rate",
                "resolution": "Resolution (px)"}
# the Train tab's "More settings": key -> (label, the value a fresh page shows: the CLI's default)
MORE_TRAIN_FIELDS = {"optimizer": ("Optimizer (its learning rate is derived)", "adamw"),
                     "ema_decay": ("EMA decay of the LoRA weights (0: off; e.g. 0.99)", "0"),
                     "validation_split": ("Validation split: share of images held out for a loss curve (0: off)", "0"),
                     "masked_loss": ("Masked loss: auto = when a masks/ folder sits beside the images; on = alpha "
                                     "channels too", "auto"),
                     "dataset_config": ("…or a dataset config on the server (YAML, or kohya's TOML): several "
                                        "subsets with repeats, captions, regularization images", ""),
                     "prior_loss_weight": ("Loss weight of regularization (class) images", "1"),
                     "sample_prompts": ("Sample prompts, one a line (kohya's options: --n negative, --w/--h size, "
                                        "--d seed, --l CFG, --s steps); drawn with the validation images", "")}
LORA_SLOTS = 4  # LoRA rows on the Generate tab, like A1111's additional-networks panel
MAX_UPLOAD_MB = 2048

CSS = """
#ld-title h1 {margin-bottom: 0}
.ld-help {color: var(--body-text-color-subdued); font-size: 0.9em}
"""


class UiState:
    """What the page's callbacks share: library, engine (behind a lock), training job, folders."""

    def __init__(self, lora_dir: str, base: str = "builtin", models_dir: str | None = None,
                 out_dir: str | None = None, device: str | None = None, dtype: str = "auto",
                 confine_paths: bool = False, data_dir: str | None = None):
        import torch

        from ..generation.engine import GenerationEngine
        from ..generation.precision import generation_dtype

        self.library = LoraLibrary(lora_dir)
        self.default_base = base
        self.models_dir = Path(models_dir).expanduser() if models_dir else None
        self.out_dir = Path(out_dir).expanduser().resolve() if out_dir else self.library.folder.parent / "outputs"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.engine = GenerationEngine(device=device, dtype=generation_dtype(dtype, device))
        self.engine_lock = threading.Lock()  # the engine re-blends weights in place: one request at a time
        self.job = TrainingJob(self.library)
        self._captioner = None  # the Train tab's captioner, loaded on the first Caption press
        # served beyond this machine: bases and data folders typed into the page must be ones the server offers
        self.confine_paths = confine_paths
        self.data_dir = Path(data_dir).expanduser().resolve() if data_dir else None

    def checked_base(self, base: str | None) -> str:
        """The base a request names, if this server offers it (any base when paths are not confined)."""
        base = base or self.default_base
        if self.confine_paths and base not in self.base_choices():
            # the same words whether or not the path exists: errors must not map the server's disk
            raise UserError(f"base {base!r} is not offered by this server; choose one from the list (the server "
                            "confines bases to builtin, --base and --models-dir while others can reach it)")
        return base

    def checked_folder(self, folder: str | None) -> str:
        """An image folder on the server that a request may train on (inside --data-dir when confined)."""
        folder = (folder or "").strip()
        if not folder or not self.confine_paths:
            return folder
        resolved = Path(folder).expanduser().resolve()
        if self.caption_dir.resolve() in resolved.parents:
            return folder  # uploads this page unpacked to caption them
        if self.data_dir is None or (resolved != self.data_dir and self.data_dir not in resolved.parents):
            raise UserError(f"image folder {folder!r} is not offered by this server; upload the images instead "
                            "(while others can reach it, the server reads folders only inside --data-dir)")
        return folder

    # ---- captions ---------------------------------------------------------------------------
    @property
    def caption_dir(self) -> Path:
        """Where uploads are unpacked to be captioned (and then trained on from there)."""
        return self.job.upload_dir / "captioning"

    def caption_grid(self, files: list | None, folder: str, base: str, caption_now: bool) -> tuple[str, list, str]:
        """(the folder the grid edits, [image, caption] rows, a status line); ``caption_now`` first writes a caption
        for every image without one, with the default captioner."""
        import secrets

        from .captions import caption_missing, caption_rows
        from .jobs import prepare_data

        folder = self.checked_folder(folder)
        if folder:
            if not Path(folder).is_dir():
                raise UserError(f"image folder {folder!r} does not exist")
        else:
            folder = str(prepare_data(_upload_paths(files), "", self.caption_dir / secrets.token_hex(8)))
        written = 0
        if caption_now:
            from ..data.captioner import DEFAULT_MODEL, detail_for, load_captioner
            from ..families import family_of_base

            with self.engine_lock:  # one model on the device at a time
                if self._captioner is None:
                    self._captioner = load_captioner(DEFAULT_MODEL)
                family = family_of_base(self.checked_base(base))
                written = caption_missing(Path(folder), self._captioner, detail_for(family.name if family else None))
        rows = caption_rows(Path(folder))
        return folder, rows, f"{written} captions written; {len(rows)} images in {Path(folder).name}. Edit the grid, then Save."

    def save_caption_grid(self, folder: str, rows) -> str:
        """The grid's captions written beside their images."""
        from .captions import save_rows

        folder = self.checked_folder(folder)
        if not folder or not Path(folder).is_dir():
            raise UserError("load a folder into the caption grid first (Caption or Load captions)")
        saved = save_rows(Path(folder), _grid_rows(rows))
        return f"saved {saved} captions in {Path(folder).name}"

    def checked_dataset_config(self, path: str) -> str:
        """A dataset config on the server a request may train with: when confined, the file and every folder it
        lists inside --data-dir."""
        from ..data.dataset_config import load_dataset_config

        if not self.confine_paths:
            return path
        self.checked_folder(str(Path(path).parent))  # before the file is read
        for subset in load_dataset_config(path).subsets:
            self.checked_folder(subset.folder)
        return path

    def base_choices(self) -> list[str]:
        """builtin, the configured base, and diffusers folders / .safetensors checkpoints in the models folder."""
        choices = ["builtin"]
        if self.default_base not in choices:
            choices.append(self.default_base)
        if self.models_dir and self.models_dir.is_dir():
            for item in sorted(self.models_dir.iterdir()):
                if (item / "model_index.json").is_file() or item.suffix.lower() == ".safetensors":
                    choices.append(str(item))
        return choices

    # ---- PNG info ---------------------------------------------------------------------------
    def png_fields(self, path: str | None) -> tuple:
        """A dropped PNG's parameters (ours or A1111's) as Generate-tab values: prompt (LoRAs as
        <lora:NAME:W> tags, which generate resolves in the library), negative, seed, steps, CFG, width,
        height, sampler, and a status line naming LoRAs the library lacks."""
        from ..generation.params import read_png_params

        if not path:
            raise UserError("drop a PNG made by lora-diffusion or A1111 first")
        try:
            params = read_png_params(Path(path))
        except UserError as error:
            raise UserError(f"{Path(path).name}: {error}") from None
        except KeyError:
            raise UserError(f"{Path(path).name}: no generation parameters in this PNG") from None
        except Exception as error:  # noqa: BLE001 - PIL raises many types for non-PNG files
            raise UserError(f"{Path(path).name}: not a readable PNG ({type(error).__name__})") from None
        tags = "".join(f" <lora:{name}:{weight:g}>" for name, weight in params.loras)
        missing = [name for name, _ in params.loras if name not in self.library.names()]
        sampler = params.sampler if params.sampler in sampler_names() else DEFAULT_SAMPLER
        status = f"loaded {Path(path).name}" + (f"; not in the LoRA library: {', '.join(missing)}" if missing else "")
        return (params.prompt + tags, params.negative_prompt, params.seed, params.steps, params.cfg_scale,
                params.width, params.height, sampler, status)

    # ---- generate ---------------------------------------------------------------------------
    def generate(self, base: str, prompt: str, negative: str, seed: float, steps: float, guidance: float,
                 width: float, height: float, scheduler: str, num_images: float, slots: list) -> tuple[list, str]:
        from ..generation.engine import LoraChoice, check_seed, next_index
        from ..generation.params import save_png
        from ..generation.prompt_tags import split_lora_tags

        if not (prompt or "").strip():
            raise UserError("write a prompt first")
        prompt, tags = split_lora_tags(prompt)  # A1111's <lora:NAME:W> picks library LoRAs too
        choices = [LoraChoice(str(self.library.path(t.name)), t.weight, t.text_weight) for t in tags]
        for enabled, name, weight in zip(slots[0::3], slots[1::3], slots[2::3]):
            if enabled and name:
                choices.append(LoraChoice(str(self.library.path(name)), float(weight)))
        seed = check_seed(seed, "Seed")
        with self.engine_lock:
            results = self.engine.generate(
                prompt, base=self.checked_base(base), loras=choices, negative_prompt=negative or "", seed=seed,
                steps=int(steps), guidance=float(guidance), width=int(width), height=int(height),
                num_images=int(num_images), scheduler=scheduler,
            )
            index = next_index(self.out_dir)
            paths = [str(save_png(image, self.out_dir / f"{index + i:05d}-{params.seed}.png", params))
                     for i, (image, params) in enumerate(results)]
        gallery = [(path, f"seed {params.seed}") for path, (_, params) in zip(paths, results)]
        return gallery, "\n\n".join(params.to_text() for _, params in results)

    # ---- compare ----------------------------------------------------------------------------
    def compare(self, base: str, prompt: str, negative: str, seed: float, steps: float, guidance: float, width: float,
                height: float, scheduler: str, lora: str, weights: str, kind: str, values: str, lora2: str) -> tuple[str, str]:
        """A1111's X/Y plot: rows = ``weights`` of ``lora``; columns = seeds, prompts (one per line) or the
        weights of ``lora2``. Returns the grid PNG's path (saved in the outputs folder) and a summary."""
        from ..generation.engine import LoraChoice, check_seed
        from ..generation.grid import grid_columns, parse_numbers, save_grid, weight_grid
        from ..generation.prompt_tags import split_lora_tags

        if not lora:
            raise UserError("Compare: choose the LoRA whose weights make the rows")
        if not (prompt or "").strip():
            raise UserError("write a prompt first")
        prompt, _ = split_lora_tags(prompt)
        row_weights = parse_numbers(weights, "Compare weights")
        first_seed = check_seed(seed, "Seed") or 0
        if kind == "seeds":
            columns = grid_columns(prompt, parse_numbers(values or str(first_seed), "Compare seeds", int))
        elif kind == "prompts":
            extra = [line.strip() for line in (values or "").splitlines() if line.strip()]
            if not extra:
                raise UserError("Compare by prompts: write one prompt per line (the main prompt is the first column)")
            columns = grid_columns(prompt, [first_seed], prompts=extra)
        else:
            if not lora2:
                raise UserError("Compare by a second LoRA: choose it, and its weights in the column box")
            columns = grid_columns(prompt, [first_seed], lora2=str(self.library.path(lora2)),
                                   weights2=parse_numbers(values, "Compare column weights"))
        if len(row_weights) * len(columns) > 64:
            raise UserError(f"Compare: {len(row_weights)} × {len(columns)} images is too many for one grid; "
                            "use at most 64 cells")
        with self.engine_lock:
            grid, params = weight_grid(
                self.engine, base=self.checked_base(base), lora=LoraChoice(str(self.library.path(lora)), 1.0),
                weights=row_weights, columns=columns, negative_prompt=negative or "", steps=int(steps),
                guidance=float(guidance), width=int(width) or None, height=int(height) or None, scheduler=scheduler)
        from ..generation.engine import next_index

        rows = [f"{lora} {w:g}" for w in row_weights]
        path = save_grid(grid, self.out_dir / f"{next_index(self.out_dir):05d}-grid.png", params, rows,
                         [c.label for c in columns])
        return str(path), f"rows: {' | '.join(rows)}\ncolumns: {' | '.join(c.label for c in columns)}"

    # ---- train ------------------------------------------------------------------------------
    def training_config(self, trigger: str, caption: str, train_te: bool, base: str, **settings: str) -> TrainConfig:
        """The run the Train tab describes: the same keys ``lora-diffusion train`` takes, "auto" (or empty) left
        to the plan, so a page-trained LoRA gets the CLI's settings on the same data."""
        from ..training.config import apply_values

        cfg = TrainConfig(base=self.checked_base(base), caption=caption or "", trigger_word=(trigger or "").strip(),
                          train_text_encoder=bool(train_te), validation_steps=12,
                          validation_prompts=[p for p in [(trigger or caption or "").strip()] if p])
        prompts = str(settings.pop("sample_prompts", "") or "").strip()
        values = {key: "auto" if str(value).strip() in ("", "auto") else str(value).strip()
                  for key, value in settings.items()}
        dataset_config = values.pop("dataset_config", "auto")
        cfg = apply_values(cfg, values, "Train tab")
        if dataset_config != "auto":
            cfg.dataset_config = self.checked_dataset_config(dataset_config)
        if prompts:  # kohya's prompt-file lines, kept as the file the trainer reads
            import hashlib

            path = self.job.work_dir / "sample-prompts" / f"{hashlib.sha256(prompts.encode()).hexdigest()[:16]}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(prompts[:100_000] + "\n", encoding="utf-8")
            _check_page_samples(path)
            cfg.sample_prompts = str(path)
        return cfg

    def preview_training(self, name: str, files: list | None, folder: str, caption: str, trigger: str,
                         train_te: bool, base: str, **settings: str) -> str:
        """The plan Start would train with, as ``lora-diffusion train`` prints it."""
        cfg = self.training_config(trigger, caption, train_te, base, **settings)
        return self.job.preview(cfg, _upload_paths(files), self.checked_folder(folder))

    def start_training(self, name: str, files: list | None, folder: str, caption: str, trigger: str,
                       train_te: bool, base: str, **settings: str) -> tuple[str, str]:
        """Start a background run; returns the status line and the plan it trains with."""
        cfg = self.training_config(trigger, caption, train_te, base, **settings)
        if not (name or "").strip():
            raise UserError("give the new LoRA a name")
        self.job.start(name, cfg, _upload_paths(files), self.checked_folder(folder))
        return self.train_status()[0], self.job.snapshot().plan

    def train_status(self) -> tuple[str, list[str], object]:
        """Status line, validation images and the loss curve (raw and smoothed) of the current run."""
        s = self.job.snapshot()
        if s.status == "idle":
            return "No training run yet.", [], _curve_frame([])
        parts = [f"**{_md(s.name)}** — {s.status}", f"step {s.step} / {s.steps}"]
        if s.loss is not None:
            parts.append(f"loss {s.loss:.4f}")
        if s.eta_s is not None and s.status in ("running", "stopping"):
            parts.append(f"ETA {int(s.eta_s) // 60}:{int(s.eta_s) % 60:02d}")
        text = " · ".join(parts)
        if s.message:
            text += "\n\n" + _md(s.message)
        # thinned: the page polls every second, and a long run's curve need not travel whole each time
        return text, s.samples, _curve_frame(thin(s.losses), s.val_losses)

    # ---- library ----------------------------------------------------------------------------
    def cards(self) -> list[tuple[str, str]]:
        """(preview image, name) for every LoRA of the library; LoRAs without a preview get a blank card."""
        cards = []
        for name in self.library.names():
            preview = self.library.preview(name)
            cards.append((str(preview) if preview else str(self._blank_card(name)), name))
        return cards

    def _blank_card(self, name: str) -> Path:
        """A card for a LoRA without a preview image: its name, drawn, so the tile says which LoRA it is without a
        hover (a plain grey tile did not)."""
        import hashlib
        import textwrap

        from PIL import Image, ImageDraw, ImageFont

        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        path = self.job.work_dir / "cards" / f"{digest}.png"  # beside the training runs, not among the user's images
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            card = Image.new("RGB", (256, 256), (226, 228, 233))
            draw = ImageDraw.Draw(card)
            try:
                font = ImageFont.load_default(size=30)
            except TypeError:  # Pillow before 10.1: one small bitmap font
                font = ImageFont.load_default()
            lines = textwrap.wrap(name, 12)[:5] or ["?"]
            top = 128 - 19 * len(lines)
            for i, line in enumerate(lines):
                width = draw.textlength(line, font=font)
                draw.text(((256 - width) / 2, top + 38 * i), line, fill=(40, 44, 52), font=font)
            card.save(path)
        return path

    def details(self, name: str) -> tuple[str, list[list[str]], object]:
        """What the Library shows for one LoRA: facts, trigger words (as clickable samples), loss curve."""
        if not name:
            return "", [], _curve_frame([])
        entry = self.library.entry(name)
        info = entry.info or {}
        return self.describe(name), [[w] for w in trigger_words(info)], _curve_frame(loss_curve(info))

    def describe(self, name: str) -> str:
        if not name:
            return ""
        entry = self.library.entry(name)
        if entry.info is None:
            return f"{entry.name}: cannot be read — {entry.error}"
        info = entry.info
        meta = info["metadata"]
        lines = [
            f"name:     {entry.name}",
            f"size:     {entry.size_bytes / 1e6:.2f} MB",
            f"format:   {info['format']}",
            f"base:     {info['base']}",
            f"rank:     {info['rank']}",
            f"alpha:    {info['alpha']}",
            f"modules:  {info['modules']} ({', '.join(f'{k} {v}' for k, v in sorted(info['components'].items()))})",
        ]
        trigger = meta.get("lora_diffusion.trigger_words")
        if trigger:
            lines.append(f"trigger:  {trigger}")
        settings = meta.get("lora_diffusion.training")
        if settings:
            try:
                parsed = json.loads(settings)
                keep = ("steps", "lr", "batch_size", "resolution", "rank", "alpha", "train_text_encoder", "caption", "seed")
                lines.append("training: " + ", ".join(f"{k}={parsed[k]}" for k in keep if k in parsed))
            except (json.JSONDecodeError, TypeError):
                lines.append(f"training: {settings}")
        lines.append("metadata:")
        lines += [f"  {k}: {v}" for k, v in sorted(meta.items())]
        # each line made printable on its own: metadata comes from strangers and is shown as text only
        return "\n".join(_plain(line, 400) for line in lines)


def base_generation_defaults(base: str) -> tuple[list[str], str, int, float] | None:
    """(sampler names, sampler, steps, guidance) the Generate tab offers for ``base``, read from its configs
    (a rectified-flow base such as FLUX.1 has its own samplers and defaults); None when only loading it can tell."""
    from ..families import family_of_configs
    from ..generation.schedulers import FLOW_SAMPLERS, is_flow
    from ..models.base_configs import read_base_configs

    try:
        configs = read_base_configs(base)
    except UserError:
        return None  # a path typed half-way: the error comes when it is used
    if configs is None:
        return None
    defaults = family_of_configs(configs).generation_for(configs)
    names = list(FLOW_SAMPLERS) if is_flow(configs.get("scheduler", {})) else sampler_names()
    return names, defaults.sampler, defaults.steps, defaults.cfg


def _base_defaults(base: str):
    import gradio as gr

    found = base_generation_defaults(base or "builtin")
    if found is None:
        return gr.update(), gr.update(), gr.update()
    names, sampler, steps, guidance = found
    return gr.update(choices=names, value=sampler), steps, guidance


PAGE_SAMPLES = (8, 100, 2048)  # a page's sample prompts: lines, steps each, pixels a side (a stranger may send them)


def _check_page_samples(path: Path) -> None:
    """Sample prompts from a page stay small: every sampling of the run draws all of them."""
    from ..training.sample_prompts import parse_sample_prompts

    lines, steps, side = PAGE_SAMPLES
    prompts = parse_sample_prompts(path, size=512, steps=20, seed=0, cfg_scale=5.0)
    if len(prompts) > lines or any(p.steps > steps or max(p.width, p.height) > side for p in prompts):
        raise UserError(f"sample prompts: at most {lines} lines, --s {steps} steps and {side} px a side on this page "
                        "(the CLI's --sample-prompts takes more)")


def _grid_rows(rows) -> list[list[str]]:
    """A Dataframe's value (pandas frame or list of rows) as [[image, caption], ...]."""
    if hasattr(rows, "values") and hasattr(rows, "columns"):
        rows = rows.values.tolist()
    return [[str(r[0]), "" if r[1] is None else str(r[1])] for r in (rows or []) if len(r) >= 2 and str(r[0])]


def _upload_paths(files: list | None) -> list[str]:
    return [str(getattr(f, "name", f)) for f in (files or [])]


def _convert(state: "UiState", name: str, layout: str) -> str:
    from ..adapters.file import read_adapter, write_adapter
    from ..adapters.file import file_dtype

    source = state.library.path(name)
    target = state.library.path(f"{source.stem}-{layout}", must_exist=False)
    if target.exists():
        raise UserError(f"a LoRA named {target.stem!r} already exists; rename or delete it first")
    adapter = read_adapter(source)
    write_adapter(adapter, target, dtype=file_dtype(adapter), layout=layout)
    return target.stem


def _merge(state: "UiState", spec: str, new_name: str) -> str:
    """``spec`` like ``style:0.8, detail:-0.3`` (names from the library); an exact merge."""
    from ..adapters.file import read_adapter, write_adapter
    from ..adapters.tools import merge_adapters_exact

    inputs = []
    for part in [p.strip() for p in (spec or "").split(",") if p.strip()]:
        name, _, weight = part.rpartition(":") if ":" in part else (part, "", "1")
        try:
            value = float(weight)
        except ValueError:
            raise UserError(f"merge: {part!r} is not NAME:WEIGHT (e.g. style:0.8)") from None
        inputs.append((read_adapter(state.library.path(name.strip())), value))
    if len(inputs) < 2:
        raise UserError("merge: list at least two LoRAs, e.g. style:0.8, detail:-0.3")
    target = state.library.path(new_name, must_exist=False)
    if target.exists():
        raise UserError(f"a LoRA named {target.stem!r} already exists; choose another name")
    write_adapter(merge_adapters_exact(inputs), target)
    return target.stem


def _curve_frame(points: list[tuple[int, float]], validation: list[tuple[int, float]] = ()):
    """A line plot's data: columns step, loss, series (raw / smoothed / validation); None for no points."""
    import pandas as pd

    if not points:
        # None, not an empty frame: a plot whose value was ever an empty frame keeps its untyped fields
        # and draws later curves as a colour gradient with no lines (Gradio 6)
        return None
    rows = curve_rows(points, validation)
    return pd.DataFrame({"step": pd.Series(rows["step"], dtype="int64"), "loss": pd.Series(rows["loss"], dtype="float64"),
                         "series": pd.Series(rows["series"], dtype="string")})


def _card_name(event) -> str | None:
    """The LoRA name of a clicked Library card (its caption). Gradio passes the click's data to a
    parameter annotated ``gr.SelectData``; ``build_app`` sets that annotation (gradio is imported late)."""
    value = event.value
    if isinstance(value, dict):
        return value.get("caption") or None
    return None


def _add_to_prompt(prompt: str, word) -> str:
    """``word`` appended to the prompt (comma-separated), unless it is already there."""
    word = (word[0] if isinstance(word, (list, tuple)) else str(word or "")).strip()
    prompt = (prompt or "").strip()
    if not word or word in [p.strip() for p in prompt.split(",")]:
        return prompt
    return f"{prompt}, {word}" if prompt else word


def _plain(text: str, limit: int = 2000) -> str:
    """One line of untrusted text, printable (control characters escaped) and cut to ``limit``."""
    from ..printable import safe_text

    return safe_text(text, limit=limit)


def _md(text: str) -> str:
    """Untrusted text for a Markdown component: printable, HTML and Markdown syntax escaped."""
    import html
    import re

    return re.sub(r"([\\`*_\[\]{}()#+!|~>-])", r"\\\1", html.escape(_plain(text), quote=False))


def _user_errors(function):
    """Run a callback; any failure reaches the page as one clear line, never a stack trace."""
    import functools

    import gradio as gr

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except UserError as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception as error:  # noqa: BLE001
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise gr.Error(f"unexpected {type(error).__name__}: {first}", print_exception=True) from None

    return wrapper


def _by_name(function, named: dict, rest: list | None = None):
    """A Gradio callback and its inputs, wired by name: ``function`` gets each component of ``named`` as the keyword
    argument of that name (and the components of ``rest``, when given, as a list in ``rest=``)."""
    names, extra = list(named), list(rest or [])

    def call(*values):
        kwargs = dict(zip(names, values[:len(names)]))
        if rest is not None:
            kwargs["rest"] = list(values[len(names):])
        return function(**kwargs)

    return call, [*named.values(), *extra]


def build_app(state: UiState):
    """The Gradio Blocks of the whole page: the Generate, Train and Library tabs, and what links them."""
    import gradio as gr

    with gr.Blocks(title="lora-diffusion", analytics_enabled=False) as demo:
        gr.Markdown("# lora-diffusion\nTrain LoRA adapters and blend them by weight.", elem_id="ld-title")
        with gr.Tab("Generate", id="generate"):
            generate = _generate_tab(state)
        with gr.Tab("Train", id="train"):
            train = _train_tab(state, generate["base"])
        with gr.Tab("Library", id="library"):
            _library_tab(state, demo, generate, train["timer"])
    return demo


def _generate_tab(state: UiState) -> dict:
    """Prompt, LoRA slots, sampler settings, PNG info and the Compare grid; returns its named components."""
    import gradio as gr

    lora_names = state.library.names()
    c: dict = {}
    with gr.Row():
        with gr.Column(scale=2):
            c["base"] = gr.Dropdown(state.base_choices(), value=state.default_base, label="Base model",
                                    allow_custom_value=True, info="builtin, a model from the models folder, or a path")
            c["prompt"] = gr.Textbox(label="Prompt", lines=2, placeholder="a red circle on a blue background, sepia photo",
                                     elem_id="prompt")
            c["negative"] = gr.Textbox(label="Negative prompt", lines=1)
            gr.Markdown("**LoRAs** — tick to use; weights add up (W = W₀ + Σ wᵢ·ΔWᵢ), −1 … 2.", elem_classes="ld-help")
            slots = []
            for i in range(LORA_SLOTS):
                with gr.Row(equal_height=True):
                    on = gr.Checkbox(label="on", value=False, scale=0, min_width=60, elem_id=f"lora-on-{i}")
                    name = gr.Dropdown(lora_names, value=None, label=f"LoRA {i + 1}", scale=3, elem_id=f"lora-name-{i}")
                    weight = gr.Slider(-1.0, 2.0, value=1.0, step=0.05, label="weight", scale=3,
                                       elem_id=f"lora-weight-{i}")
                slots += [on, name, weight]
            c["slot_names"] = slots[1::3]
            with gr.Row():
                c["seed"] = gr.Number(value=-1, precision=0, label="Seed (−1: random)", elem_id="seed")
                dice = gr.Button("Random seed", size="sm")
                c["steps"] = gr.Slider(1, 100, value=DEFAULT_STEPS, step=1, label="Steps")
                c["guidance"] = gr.Slider(1.0, 15.0, value=DEFAULT_CFG, step=0.5, label="Guidance (CFG)")
            with gr.Row():
                # 0 follows the picked base: 64 px built-in, 512 SD1.x, 768 SD2.x, 1024 SDXL
                c["width"] = gr.Slider(0, 2048, value=0, step=8, label="Width (0: the base's native size)")
                c["height"] = gr.Slider(0, 2048, value=0, step=8, label="Height (0: the base's native size)")
                c["scheduler"] = gr.Dropdown(sampler_names(), value=DEFAULT_SAMPLER, label="Sampler")
                count = gr.Slider(1, 8, value=2, step=1, label="Images", elem_id="count")
            go = gr.Button("Generate", variant="primary", elem_id="generate-button")
            with gr.Accordion("PNG info: reuse an image's parameters", open=False):
                png = gr.File(label="PNG (lora-diffusion or A1111)", file_types=[".png"], elem_id="png-info")
                png_status = gr.Markdown(elem_id="png-status")
            compare = _compare_panel(lora_names)
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Images", columns=2, height=520, elem_id="gallery", format="png")
            params = gr.Textbox(label="Parameters (also stored in each PNG)", lines=5, interactive=False,
                                elem_id="params")
            grid_image = gr.Image(label="Compare grid (saved in the outputs folder)", type="filepath",
                                  format="png", elem_id="compare-grid", interactive=False)
            grid_axes = gr.Textbox(label="Grid axes", lines=2, interactive=False, elem_id="compare-axes")
    c["compare_lora"], c["compare_lora2"] = compare["lora"], compare["lora2"]
    shared = {key: c[key] for key in ("base", "prompt", "negative", "seed", "steps", "guidance", "width", "height",
                                      "scheduler")}
    dice.click(lambda: random.randrange(2**31), outputs=c["seed"], concurrency_limit=None)
    c["base"].change(_user_errors(_base_defaults), inputs=c["base"],
                     outputs=[c["scheduler"], c["steps"], c["guidance"]], concurrency_limit=None)
    png.upload(_user_errors(state.png_fields), inputs=png,
               outputs=[c[k] for k in ("prompt", "negative", "seed", "steps", "guidance", "width", "height",
                                       "scheduler")] + [png_status])
    call, inputs = _by_name(lambda rest, **kw: state.generate(**kw, slots=rest), shared | {"num_images": count}, slots)
    go.click(_user_errors(call), inputs=inputs, outputs=[gallery, params], concurrency_id="engine",
             concurrency_limit=1, api_name="generate")
    call, inputs = _by_name(state.compare, shared | {"lora": compare["lora"], "weights": compare["weights"],
                                                     "kind": compare["kind"], "values": compare["values"],
                                                     "lora2": compare["lora2"]})
    compare["go"].click(_user_errors(call), inputs=inputs, outputs=[grid_image, grid_axes], concurrency_id="engine",
                        concurrency_limit=1)
    return c


def _compare_panel(lora_names: list[str]) -> dict:
    import gradio as gr

    c: dict = {}
    with gr.Accordion("Compare: a weight grid (A1111's X/Y plot)", open=False, elem_id="compare"):
        gr.Markdown("Rows: weights of one LoRA. Columns: seeds, prompts (one per line; the prompt above is the first) "
                    "or a second LoRA's weights. Each column keeps its seed, so only the weight changes down a column.",
                    elem_classes="ld-help")
        with gr.Row():
            c["lora"] = gr.Dropdown(lora_names, value=None, label="LoRA (rows)", elem_id="compare-lora")
            c["weights"] = gr.Textbox(value="0,0.25,0.5,0.75,1", label="Row weights", elem_id="compare-weights")
        with gr.Row():
            c["kind"] = gr.Radio(["seeds", "prompts", "second LoRA"], value="seeds", label="Columns",
                                 elem_id="compare-kind")
            c["lora2"] = gr.Dropdown(lora_names, value=None, label="Second LoRA", elem_id="compare-lora2")
        c["values"] = gr.Textbox(value="1,2,3", lines=2, label="Column values: seeds, prompts (one per line) or the "
                                 "second LoRA's weights", elem_id="compare-values")
        c["go"] = gr.Button("Make the grid", elem_id="compare-button")
    return c


def _caption_panel(state: UiState, c: dict, base) -> None:
    """Caption (uploads are unpacked into a folder first, which the run then trains on) → an editable grid →
    find/replace and trigger word for all → Save writes the .txt files beside the images."""
    import gradio as gr

    from .captions import bulk_edit

    with gr.Row():
        caption = gr.Button("Caption the images without one", elem_id="caption-button")
        load = gr.Button("Load captions", elem_id="caption-load")
    grid = gr.Dataframe(headers=["image", "caption"], datatype=["str", "str"], type="array", col_count=(2, "fixed"),
                        interactive=True, wrap=True, elem_id="caption-grid", label="Captions (edit a cell, then Save)")
    with gr.Row():
        find = gr.Textbox(label="Find", elem_id="caption-find")
        replace = gr.Textbox(label="Replace with", elem_id="caption-replace")
        trigger = gr.Textbox(label="Put in front of every caption", elem_id="caption-trigger")
    with gr.Row():
        apply = gr.Button("Apply to all", elem_id="caption-apply")
        save = gr.Button("Save captions", variant="primary", elem_id="caption-save")
    status = gr.Markdown("", elem_id="caption-status")
    for button, now in ((caption, True), (load, False)):
        button.click(_user_errors(lambda files, folder, b, now=now: state.caption_grid(files, folder, b, now)),
                     inputs=[c["files"], c["folder"], base], outputs=[c["folder"], grid, status])
    apply.click(_user_errors(lambda rows, f, r, t: bulk_edit(_grid_rows(rows), f or "", r or "", t or "")),
                inputs=[grid, find, replace, trigger], outputs=grid)
    save.click(_user_errors(state.save_caption_grid), inputs=[c["folder"], grid], outputs=status,
               api_name="save_captions")


def _more_train_fields(c: dict) -> None:
    """The Train tab's less common settings, each a key of ``lora-diffusion train`` at the CLI's default."""
    import gradio as gr

    from ..training.config import CHOICES

    for key, (label, default) in MORE_TRAIN_FIELDS.items():
        elem_id = f"train-{key.replace('_', '-')}"
        if key in CHOICES:
            c[key] = gr.Dropdown(list(CHOICES[key]), value=default, label=label, elem_id=elem_id)
        elif key == "sample_prompts":
            c[key] = gr.Textbox(value=default, label=label, lines=3, elem_id=elem_id)
        else:
            c[key] = gr.Textbox(value=default, label=label, elem_id=elem_id)


def _train_tab(state: UiState, base) -> dict:
    """Data, name, the derived-by-default settings, the plan, and the live run; returns its named components."""
    import gradio as gr

    gr.Markdown("Upload images (or a .zip), or give a folder. Captions come from same-name .txt files; images without "
                "one use the caption below. The trigger word goes in front of every caption. Settings left at "
                "**auto** are derived for the base, the data and this machine, as `lora-diffusion train` does: "
                "**Show the plan** says what they will be.", elem_classes="ld-help")
    c: dict = {}
    with gr.Row():
        with gr.Column():
            c["name"] = gr.Textbox(label="LoRA name", placeholder="my-style", elem_id="train-name")
            c["files"] = gr.File(label="Images, captions or a .zip", file_count="multiple",
                                 file_types=["image", ".txt", ".zip"], elem_id="train-files")
            c["folder"] = gr.Textbox(label="…or an image folder on the server", elem_id="train-folder")
            c["caption"] = gr.Textbox(label="Caption for images without a .txt", elem_id="train-caption")
            c["trigger"] = gr.Textbox(label="Trigger word", placeholder="sks style")
            with gr.Accordion("Captions: caption the images, then review and edit them", open=False,
                              elem_id="caption-panel"):
                _caption_panel(state, c, base)
        with gr.Column():
            with gr.Row():
                for key, label in TRAIN_FIELDS.items():
                    c[key] = gr.Textbox(value="auto", label=label, elem_id=f"train-{key.replace('_', '-')}")
            c["train_te"] = gr.Checkbox(label="Also train the text encoder", value=False)
            with gr.Accordion("More settings", open=False, elem_id="train-more"):
                _more_train_fields(c)
            with gr.Row():
                show_plan = gr.Button("Show the plan", elem_id="train-plan-button")
                start = gr.Button("Start training", variant="primary", elem_id="train-start")
                stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
            plan = gr.Textbox(label="Plan (what auto becomes, and why)", lines=8, interactive=False,
                              elem_id="train-plan")
            status = gr.Markdown("No training run yet.", elem_id="train-status")
            loss_plot = gr.LinePlot(None, x="step", y="loss", color="series", height=260,
                                    label="Loss (raw and smoothed)", elem_id="train-loss-plot",
                                    color_map={"raw": "#9ecae1", "smoothed": "#08519c", "validation": "#e6550d"})
            # a validation image is a strip of one image per prompt: shown whole, one per row
            # square-ish cells a grid can fill, full size on a click (one 240 px column made a wide grid a strip)
            samples = gr.Gallery(label="Validation images (click for full size)", columns=3, height=420,
                                 object_fit="contain", allow_preview=True, elem_id="validation-gallery")
    # the API's order: the first fields and the base as before "More settings" existed (API callers keep working;
    # the later inputs take their defaults when left out)
    fields = {key: c[key] for key in ("name", "files", "folder", "caption", "trigger", *TRAIN_FIELDS, "train_te")}
    fields = fields | {"base": base} | {key: c[key] for key in MORE_TRAIN_FIELDS}
    call, inputs = _by_name(state.preview_training, fields)
    show_plan.click(_user_errors(call), inputs=inputs, outputs=plan, concurrency_limit=None)
    call, inputs = _by_name(state.start_training, fields)
    start.click(_user_errors(call), inputs=inputs, outputs=[status, plan], concurrency_limit=None,
                api_name="start_training")
    stop.click(lambda: state.job.stop() or state.train_status()[0], outputs=status, concurrency_limit=None)
    c["timer"] = gr.Timer(1.0)

    def live_status():
        text, images, frame = state.train_status()
        snapshot = state.job.snapshot()
        steps = len(snapshot.losses)
        label = f"Loss (raw and smoothed{', validation' if snapshot.val_losses else ''}): {steps} step{'s' if steps != 1 else ''}"
        return text, images, gr.update(value=frame, label=label), snapshot.plan or gr.update()

    c["timer"].tick(live_status, outputs=[status, samples, loss_plot, plan], concurrency_limit=None,
                    show_progress="hidden")
    return c


def _library_tab(state: UiState, demo, generate: dict, timer) -> None:
    """Cards, facts, trigger words and loss curve of each LoRA; add, rename, delete, convert, merge. Every list of
    LoRA names on the page is refreshed after a change here or a finished training run."""
    import gradio as gr

    lora_names = state.library.names()
    with gr.Row():
        with gr.Column(scale=1):
            chosen = gr.Dropdown(lora_names, value=None, label="LoRA", elem_id="library-choice")
            refresh = gr.Button("Refresh list", elem_id="library-refresh")
            upload = gr.File(label="Add a .safetensors LoRA", file_types=[".safetensors"], elem_id="library-upload")
            rename_to = gr.Textbox(label="New name")
            with gr.Row():
                rename = gr.Button("Rename")
                delete = gr.Button("Delete", variant="stop")
            with gr.Row():
                to_diffusers = gr.Button("Copy as diffusers layout")
                to_kohya = gr.Button("Copy as kohya layout")
            merge_spec = gr.Textbox(label="Merge (exact): NAME:WEIGHT, …", placeholder="style:0.8, detail:-0.3")
            merge_name = gr.Textbox(label="Merged LoRA name")
            merge = gr.Button("Merge")
            library_msg = gr.Markdown("", elem_id="library-message")
        with gr.Column(scale=2):
            cards = gr.Gallery(state.cards(), label="LoRAs (click a card)", columns=6, height=220,
                               object_fit="contain", allow_preview=False, elem_id="library-cards")
            words = gr.Dataset(components=[gr.Textbox(visible=False)], samples=[],
                               label="Trigger words (click one to add it to the prompt)", elem_id="library-trigger-words")
            curve = gr.LinePlot(None, x="step", y="loss", color="series", height=200,
                                label="Training loss of this LoRA", elem_id="library-loss-plot",
                                color_map={"raw": "#9ecae1", "smoothed": "#08519c"})
            info = gr.Textbox(label="What the file holds", lines=22, interactive=False, elem_id="library-info")
    # every list of LoRA names on the page, refreshed together (and the library's cards after them)
    name_dropdowns = [*generate["slot_names"], generate["compare_lora"], generate["compare_lora2"]]

    def lists(selected=None):
        names = state.library.names()
        value = selected if selected in names else None
        return ([gr.update(choices=names, value=value)] + [gr.update(choices=names) for _ in name_dropdowns]
                + [gr.update(value=state.cards())])

    def on_chosen(name):
        text, samples, frame = state.details(name)
        return text, gr.update(samples=samples), frame

    chosen.change(_user_errors(on_chosen), inputs=chosen, outputs=[info, words, curve], concurrency_limit=None)
    _card_name.__annotations__["event"] = gr.SelectData
    cards.select(_card_name, outputs=chosen, concurrency_limit=None)
    words.click(_add_to_prompt, inputs=[generate["prompt"], words], outputs=generate["prompt"], concurrency_limit=None)
    refresh.click(lambda: lists(), outputs=[chosen, *name_dropdowns, cards], concurrency_limit=None)
    actions = _library_actions(state, lists)
    library_outputs = [library_msg, chosen, *name_dropdowns, cards]
    to_diffusers.click(_user_errors(lambda n: actions["convert"](n, "diffusers")), inputs=chosen,
                       outputs=library_outputs, concurrency_limit=None)
    to_kohya.click(_user_errors(lambda n: actions["convert"](n, "kohya")), inputs=chosen, outputs=library_outputs,
                   concurrency_limit=None)
    merge.click(_user_errors(actions["merge"]), inputs=[merge_spec, merge_name], outputs=library_outputs,
                concurrency_limit=None)
    upload.upload(_user_errors(actions["upload"]), inputs=upload, outputs=library_outputs, concurrency_limit=None,
                  api_name="on_upload")
    rename.click(_user_errors(actions["rename"]), inputs=[chosen, rename_to], outputs=library_outputs,
                 concurrency_limit=None, api_name="on_rename")
    delete.click(_user_errors(actions["delete"]), inputs=chosen, outputs=library_outputs, concurrency_limit=None,
                 api_name="on_delete")
    # a finished training run shows up in every list without a manual refresh
    demo.load(lambda: lists(), outputs=[chosen, *name_dropdowns, cards])
    finished = gr.State("")

    def refresh_when_done(last):
        s = state.job.snapshot()
        key = f"{s.name}:{s.status}" if s.status in ("done", "stopped") else last
        if key != last:
            return [key, *lists()]
        return [last] + [gr.update() for _ in range(len(name_dropdowns) + 2)]

    timer.tick(refresh_when_done, inputs=finished, outputs=[finished, chosen, *name_dropdowns, cards],
               concurrency_limit=None, show_progress="hidden")


def _library_actions(state: UiState, lists) -> dict:
    """The Library's buttons: each returns its message and every refreshed name list."""

    def upload(file):
        if file is None:
            return ["", *lists()]
        added = state.library.add(getattr(file, "name", file))
        return [f"added **{_md(added)}**", *lists(added)]

    def rename(old, new):
        if not old:
            raise UserError("choose a LoRA to rename")
        renamed = state.library.rename(old, new)
        return [f"renamed to **{_md(renamed)}**", *lists(renamed)]

    def delete(name):
        if not name:
            raise UserError("choose a LoRA to delete")
        state.library.delete(name)
        return [f"deleted {_md(name)}", *lists()]

    def convert(name, layout):
        if not name:
            raise UserError("choose a LoRA to convert")
        made = _convert(state, name, layout)
        return [f"wrote **{_md(made)}** ({layout} layout)", *lists(made)]

    def merge(spec, new_name):
        made = _merge(state, spec, new_name)
        return [f"merged into **{_md(made)}**", *lists(made)]

    return {"upload": upload, "rename": rename, "delete": delete, "convert": convert, "merge": merge}


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def launch(lora_dir: str, base: str = "builtin", host: str = "127.0.0.1", port: int = 7860, auth: str | None = None,
           models_dir: str | None = None, out_dir: str | None = None, share: bool = False,
           block: bool = True, dtype: str = "auto", data_dir: str | None = None, allow_any_path: bool = False):
    """Build and start the page; returns (demo, url)."""
    public = share or not is_loopback(host)
    state = UiState(lora_dir, base, models_dir, out_dir, dtype=dtype, confine_paths=public and not allow_any_path,
                    data_dir=data_dir)
    if public and not auth:
        print(f"WARNING: the UI is reachable from other machines ({'a public share link' if share else f'--host {host}'}) "
              "with no login: anyone who reaches it can generate, train, and see the outputs and training samples. "
              "Pass --auth USER:PASSWORD.", file=sys.stderr, flush=True)
    if public:
        print("the UI serves others: bases are confined to builtin, --base and --models-dir, and server folders to "
              + (f"--data-dir {state.data_dir}" if state.data_dir else "none (give --data-dir to offer some)")
              + (" (--allow-any-path: not confined)" if allow_any_path else ""), file=sys.stderr, flush=True)
    demo = build_app(state)
    credentials = None
    if auth:
        user, sep, password = auth.partition(":")
        if not sep or not user or not password:
            raise UserError("--auth must be USER:PASSWORD")
        credentials = (user, password)
    demo.queue(default_concurrency_limit=1)
    allowed = [str(state.out_dir), str(state.job.work_dir)]
    state.job.work_dir.mkdir(parents=True, exist_ok=True)
    _, url, _ = demo.launch(
        server_name=host, server_port=port, auth=credentials, share=share, prevent_thread_lock=True,
        allowed_paths=allowed, max_file_size=f"{MAX_UPLOAD_MB}mb", quiet=True, show_error=False,
        footer_links=["api", "settings"], css=CSS, theme="soft", ssr_mode=False,
    )
    print(f"lora-diffusion UI running at {url}", flush=True)
    if block:
        demo.block_thread()
    return demo, url

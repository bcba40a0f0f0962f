"""Dataset configs with several subsets (``--dataset-config FILE``): our YAML, or kohya's TOML as its guides ship it.

YAML::

    resolution: 512            # optional, as the flags
    subsets:
      - folder: data/me
        repeats: 10
        trigger_word: sks person
        caption_dropout: 0.05
      - folder: data/people
        is_reg: true           # regularization (class) images: their loss is weighted by --prior-loss-weight

kohya TOML: ``[general]`` options cascade into each ``[[datasets]]`` and its ``[[datasets.subsets]]``; kohya's
names are read as ours (``image_dir`` = folder, ``num_repeats`` = repeats, ``class_tokens`` = trigger word,
``caption_dropout_rate``, ``shuffle_caption``, ``flip_aug``, ``enable_bucket``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import UserError

# kohya's subset/dataset keys -> ours
KOHYA_NAMES = {"image_dir": "folder", "num_repeats": "repeats", "class_tokens": "trigger_word",
               "caption_dropout_rate": "caption_dropout", "shuffle_caption": "caption_shuffle", "flip_aug": "flip",
               "enable_bucket": "bucketing"}
DATASET_KEYS = ("resolution", "batch_size", "bucketing")  # one value per run
# kohya keys with no meaning here, accepted and left alone (so a guide's file loads), said once
IGNORED = {"color_aug", "random_crop", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale",
           "caption_tag_dropout_rate", "caption_dropout_every_n_epochs", "token_warmup_min", "token_warmup_step",
           "face_crop_aug_range", "caption_prefix", "caption_suffix", "secondary_separator", "enable_wildcard",
           "keep_tokens_separator", "cache_info", "alpha_mask", "conditioning_data_dir", "metadata_file",
           "validation_seed", "validation_split", "network_multiplier", "debug_dataset"}


@dataclass(frozen=True)
class Subset:
    """One folder of a dataset config and how its images train."""

    folder: str
    repeats: int = 1
    caption_extension: str = ".txt"
    trigger_word: str = ""
    caption: str = ""
    caption_dropout: float | None = None  # None: the run's
    caption_shuffle: bool | None = None
    keep_tokens: int | None = None
    flip: bool | None = None
    is_reg: bool = False


SUBSET_KEYS = {f.name for f in fields(Subset)}


@dataclass
class DatasetConfig:
    subsets: list[Subset]
    settings: dict[str, Any]  # run-level keys (resolution, batch_size, bucketing) the file sets
    ignored: list[str]  # kohya keys read and not used


def load_dataset_config(path: str | Path) -> DatasetConfig:
    """The subsets of a ``.yaml``/``.yml`` or kohya ``.toml`` dataset config; folders relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--dataset-config {path}: no such file")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise UserError(f"--dataset-config {path}: not valid TOML ({error})") from None
        return _from_kohya(raw, path)
    import yaml

    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise UserError(f"--dataset-config {path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("subsets"), list) or not raw["subsets"]:
        raise UserError(f"--dataset-config {path}: needs a 'subsets:' list, each with a folder")
    settings = {k: v for k, v in raw.items() if k != "subsets"}
    return _build([settings | s for s in raw["subsets"]], path, ignored=[])


def _from_kohya(raw: dict, path: Path) -> DatasetConfig:
    general = dict(raw.get("general") or {})
    datasets = raw.get("datasets") or []
    if not datasets:
        raise UserError(f"--dataset-config {path}: no [[datasets]] table (kohya's layout: [[datasets]] with "
                        "[[datasets.subsets]] under it)")
    merged = []
    for dataset in datasets:
        options = general | {k: v for k, v in dataset.items() if k != "subsets"}
        for subset in dataset.get("subsets") or []:
            merged.append(options | subset)
    return _build(merged, path, ignored=sorted({k for entry in merged for k in entry if k in IGNORED}))


def _build(entries: list[dict], path: Path, ignored: list[str]) -> DatasetConfig:
    subsets, settings = [], {}
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise UserError(f"--dataset-config {path}: subset {number} is not a table of keys")
        values = {KOHYA_NAMES.get(k, k): v for k, v in entry.items() if k not in IGNORED}
        for key in DATASET_KEYS:
            if key in values:
                value = values.pop(key)
                if settings.get(key, value) != value:
                    raise UserError(f"--dataset-config {path}: {key} is {settings[key]!r} in one subset and {value!r} "
                                    "in another; one value per run")
                settings[key] = value
        unknown = sorted(set(values) - SUBSET_KEYS)
        if unknown:
            raise UserError(f"--dataset-config {path}: subset {number} has unknown key {unknown[0]!r}; subset keys: "
                            f"{', '.join(sorted(SUBSET_KEYS))}")
        if not values.get("folder"):
            raise UserError(f"--dataset-config {path}: subset {number} has no folder (image_dir in kohya's files)")
        folder = Path(str(values["folder"])).expanduser()
        # kohya's files name folders from where the trainer runs; ours may also name them from the file
        if not folder.is_absolute() and not folder.is_dir():
            folder = path.parent / folder
        values["folder"] = str(folder)
        if not isinstance(values.get("repeats", 1), int) or values.get("repeats", 1) < 1:
            raise UserError(f"--dataset-config {path}: subset {number}: repeats must be a whole number ≥ 1")
        subsets.append(Subset(**values))
    return DatasetConfig(subsets, settings, ignored)

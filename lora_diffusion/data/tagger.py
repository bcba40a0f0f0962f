"""Danbooru-style tags from a WD14-family tagger (SmilingWolf's ``model.onnx`` + ``selected_tags.csv``) through
onnxruntime, for anime bases (``lora-diffusion caption --tags``): character tags above their threshold first, then
general tags above theirs, most likely first; rating tags are left out."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

DEFAULT_TAGGER = "SmilingWolf/wd-swinv2-tagger-v3"  # the v3 taggers' balance of quality and size
GENERAL, CHARACTER = 0, 4  # selected_tags.csv categories (9 is the rating)
FILES = ("model.onnx", "selected_tags.csv")


@dataclass
class Tagger:
    session: object  # onnxruntime.InferenceSession
    names: list[str]
    categories: list[int]
    size: int  # the square side the model takes

    def tags(self, images: list, general: float = 0.35, character: float = 0.85,
             underscores: bool = False) -> list[str]:
        """One comma-separated tag list per PIL image."""
        batch = np.stack([self._pixels(im) for im in images])
        name = self.session.get_inputs()[0].name
        probs = self.session.run(None, {name: batch})[0]
        out = []
        for row in probs:
            chosen = [(p, i) for i, p in enumerate(row)
                      if (self.categories[i] == CHARACTER and p >= character)
                      or (self.categories[i] == GENERAL and p >= general)]
            chosen.sort(key=lambda pi: (self.categories[pi[1]] != CHARACTER, -pi[0]))
            tags = [self.names[i] if underscores else self.names[i].replace("_", " ") for _, i in chosen]
            out.append(", ".join(tags))
        return out

    def _pixels(self, image) -> np.ndarray:
        """The WD14 input: padded to a white square, resized, BGR, 0-255 float, height × width × 3."""
        from PIL import Image

        side = max(image.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image.convert("RGB"), ((side - image.width) // 2, (side - image.height) // 2))
        square = square.resize((self.size, self.size), Image.BICUBIC)
        return np.asarray(square, dtype=np.float32)[:, :, ::-1].copy()


def _files(model: str) -> tuple[Path, Path]:
    folder = Path(model).expanduser()
    if folder.is_dir():
        paths = tuple(folder / f for f in FILES)
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise UserError(f"tagger folder {model} has no {missing[0]}; a WD14 tagger folder holds {' and '.join(FILES)}")
        return paths
    from huggingface_hub import hf_hub_download

    try:
        return tuple(Path(hf_hub_download(model, f)) for f in FILES)
    except Exception as error:  # noqa: BLE001 - offline, not cached, no such repo: all say the same to the user
        raise UserError(f"tagger {model!r} is not on this machine and cannot be downloaded now "
                        f"({type(error).__name__}); fetch it once with `hf download {model} {' '.join(FILES)}` "
                        "(or pass --model with a local folder)") from None


def load_tagger(model: str = DEFAULT_TAGGER, device: str | None = None) -> Tagger:
    """A WD14 tagger from a hub id or a folder with ``model.onnx`` and ``selected_tags.csv``; CUDA when
    onnxruntime has it, else the CPU."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError("tagging needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu)") from None
    onnx_path, csv_path = _files(model)
    available = onnxruntime.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available
                 and (device != "cpu" or p == "CPUExecutionProvider")]
    session = onnxruntime.InferenceSession(str(onnx_path), providers=providers)
    with csv_path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    names, categories = [r["name"] for r in rows], [int(r["category"]) for r in rows]
    shape = session.get_inputs()[0].shape  # [batch, height, width, 3]
    if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int):
        raise UserError(f"tagger {model!r} does not take height × width × 3 images (input {shape}); not a WD14 tagger")
    outputs = session.get_outputs()[0].shape[-1]
    if isinstance(outputs, int) and outputs != len(names):
        raise UserError(f"tagger {model!r}: its model has {outputs} outputs for {len(names)} tags in selected_tags.csv")
    return Tagger(session, names, categories, int(shape[1]))

"""Loss masks (``--masked-loss``): which pixels of a training image count. A same-name image in a ``masks/`` folder
beside the image (white counts, black is ignored, grey in between; kohya's and OneTrainer's layout), else, when
asked, the image's own alpha channel. Images with neither count whole."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps

from ..errors import UserError
from .images import IMAGE_EXTENSIONS, BadImage, open_rgb

MASK_FOLDER = "masks"


def mask_file(image_path: str | Path) -> Path | None:
    """The mask of ``image_path`` in the ``masks/`` folder beside it (any image extension), or None."""
    image_path = Path(image_path)
    folder = image_path.parent / MASK_FOLDER
    if not folder.is_dir():
        return None
    for extension in IMAGE_EXTENSIONS:
        for candidate in (folder / f"{image_path.stem}{extension}", folder / f"{image_path.stem}{extension.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def has_alpha(image_path: str | Path) -> bool:
    """Whether the image has transparency, from its header (no decode)."""
    try:
        with Image.open(image_path) as image:
            return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    except Exception:  # noqa: BLE001 - an unreadable file is reported where it is decoded
        return False


def open_mask(image_path: str | Path, size: tuple[int, int], use_alpha: bool) -> Image.Image | None:
    """The image's mask as an 8-bit grey image of ``size`` (the image's own), or None (the whole image counts).
    A mask file of another size is stretched to the image's; an unreadable mask file raises ``BadImage``."""
    path = mask_file(image_path)
    if path is not None:
        try:
            mask = open_rgb(path).convert("L")
        except BadImage as error:
            raise BadImage(f"its mask {path.name} is {error}") from None
        return mask if mask.size == size else mask.resize(size, Image.BILINEAR)
    if use_alpha and has_alpha(image_path):
        with Image.open(image_path) as image:
            image = ImageOps.exif_transpose(image)  # the pixels are turned so; their mask must be too
            alpha = image.convert("RGBA").getchannel("A")
        return alpha if alpha.size == size else alpha.resize(size, Image.BILINEAR)
    return None


def masked_loss_mode(mode: str, image_paths: list[str]) -> tuple[bool, bool, str]:
    """(mask the loss, use alpha channels too, what was found) for ``--masked-loss`` ``mode``: ``auto`` masks when
    any image has a file in a ``masks/`` folder; ``on`` also takes alpha channels, and wants at least one mask."""
    if mode == "off":
        return False, False, ""
    files = sum(mask_file(path) is not None for path in image_paths)
    alpha = sum(has_alpha(path) for path in image_paths if mask_file(path) is None) if mode == "on" else 0
    if mode == "auto" and not files:
        return False, False, ""
    if not files and not alpha:
        raise UserError("--masked-loss on: no image has a mask (a same-name image in a masks/ folder beside it) or "
                        "an alpha channel; add masks, or leave --masked-loss at auto")
    found = [f"{files} from masks/ files" if files else "", f"{alpha} from alpha channels" if alpha else ""]
    return True, mode == "on", (f"masked loss: {files + alpha} of {len(image_paths)} images have a mask "
                                f"({', '.join(f for f in found if f)}); the rest count whole")

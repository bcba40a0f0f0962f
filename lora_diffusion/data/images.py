"""Opening user images safely: every mode to RGB, EXIF orientation applied, bad files reported."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_PIXELS = 64_000_000  # larger declared sizes are treated as decompression bombs


class BadImage(Exception):
    """An image file that cannot be used; the message says why in a few words."""


def open_rgb(path: str | Path) -> Image.Image:
    """The image as 8-bit RGB: EXIF rotation applied, transparency composited on white,
    16-bit, CMYK, palette and grey modes converted. Raises ``BadImage``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise BadImage(f"declared size {image.width}x{image.height} is too large")
                image.seek(0)  # animated GIF/WebP: the first frame
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage("decompression bomb (declared size too large)") from None
    except Exception as error:  # noqa: BLE001 - PIL raises many types for broken files
        raise BadImage(f"not a readable image ({type(error).__name__})") from None


def displayed_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as ``open_rgb`` will return the image, from the header alone (EXIF
    orientations 5-8 swap the sides). Raises the file's own error when it cannot be read."""
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray((arr / top * 255).clip(0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    image.load()
    return image.convert("RGB")

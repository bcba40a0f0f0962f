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


def header_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a training image, from its header and structure without decoding the pixels (None:
    it looks usable): not an image at all, a declared size too large, a PNG whose chunks do not check out, or a
    JPEG cut short (no end-of-image marker: a partial download). Milliseconds per file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                kind, (width, height) = image.format, image.size
                if width * height > MAX_PIXELS:
                    return f"declared size {width}x{height} is too large"
                image.verify()  # PNG: every chunk's CRC and the IEND chunk; other formats: a no-op
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "decompression bomb (declared size too large)"
    except Image.UnidentifiedImageError:
        return "not a readable image (no image format PIL knows in its header)"
    except Exception as error:  # noqa: BLE001 - PIL raises many types for broken files
        return f"not a readable image ({type(error).__name__}: {str(error).splitlines()[0][:80] if str(error) else ''})"
    if kind == "JPEG":
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 64))
            if b"\xff\xd9" not in handle.read():
                return "a JPEG cut short (no end-of-image marker; a partial download?)"
    return None


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

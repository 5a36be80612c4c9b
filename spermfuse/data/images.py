"""Image files as they enter: which files are images, a check that one decodes, and ``load_rgb``
(any bit depth, EXIF orientation applied, alpha composited onto the background colour).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


def is_image_file(path: Path) -> bool:
    """Whether ``path``'s extension is one of the image formats read here."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def read_image(path: Path) -> tuple[Image.Image | None, str | None]:
    """Decode the whole file: (the image, None), or (None, why it is unusable)."""
    try:
        if path.stat().st_size == 0:
            return None, "zero-byte file"
        with Image.open(path) as image:
            image.load()
    except FileNotFoundError:
        return None, "file not found"
    except UnidentifiedImageError:
        return None, "not an image (the extension says image, the content does not)"
    except Image.DecompressionBombError as error:
        return None, f"too large to decode safely ({error})"
    except (OSError, SyntaxError, ValueError) as error:
        return None, f"unreadable or truncated image ({error})"
    return image, None


def check_image(path: Path) -> str | None:
    """Decode the whole file; return why it is unusable, or None when it is fine."""
    return read_image(path)[1]


# The value that is full white in each high-bit-depth mode: 16-bit integers, 32-bit
# integers (how Pillow opens most 16-bit PNGs and TIFFs: their range is still 16 bits), and
# floats, which microscopy software writes in [0, 1].
MODE_FULL_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0, "F": 1.0}


def load_rgb(path: Path, background: tuple[int, int, int] = (204, 191, 183)) -> Image.Image:
    """Open an image as 8-bit RGB: EXIF orientation applied; grey, palette, 16-bit and alpha handled.

    Transparent pixels are composited onto ``background`` rather than turning black.
    """
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot read image ({error}); remove or replace it") from None
    if image.mode in MODE_FULL_SCALE:
        # Scaled by what the mode can hold, never by this image's own maximum: a dim frame
        # stays dim, and every image of a data set is scaled alike.
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(
            np.clip(array / MODE_FULL_SCALE[image.mode] * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L"
        )
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (*background, 255))
        image = Image.alpha_composite(canvas, image)
    return image.convert("RGB") if image.mode != "RGB" else image

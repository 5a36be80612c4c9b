"""Method B preprocessing: Otsu threshold + elliptical closing (hybrid Otsu, Sec. 2.4).

The paper resizes to 224x224, converts to grey, thresholds with Otsu's method,
closes the binary mask with a 5x5 elliptical structuring element (one dilation,
then one erosion), and feeds the segmented grey image replicated to 3 channels.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image
from scipy import ndimage


def otsu_threshold(gray: np.ndarray) -> int:
    """Otsu's threshold t* of a uint8 image (Sec. 2.4.1, Eqs. 1-6).

    Maximises the between-class variance sigma_B^2(t) = (mu_T w(t) - mu(t))^2 / (w(t) (1 - w(t)))
    over the 256-bin histogram. Class 0 is {pixels <= t}, class 1 (foreground) is {pixels > t}.
    A constant image returns its value (everything is background).
    """
    gray = np.asarray(gray)
    if gray.dtype != np.uint8:
        raise TypeError(f"otsu_threshold expects a uint8 image, got {gray.dtype}")
    histogram = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    probability = histogram / histogram.sum()
    weight = np.cumsum(probability)  # w(t): probability of class 0
    cumulative_mean = np.cumsum(probability * np.arange(256))  # mu(t)
    total_mean = cumulative_mean[-1]
    denominator = weight * (1.0 - weight)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where(denominator > 0, (total_mean * weight - cumulative_mean) ** 2 / denominator, -1.0)
    if between.max() < 0:
        return int(gray.flat[0])
    # Several t can tie (empty bins between the modes): take the first, as OpenCV does.
    return int(np.argmax(between))


def elliptical_kernel(size: int = 5) -> np.ndarray:
    """Boolean elliptical structuring element, the same shape as OpenCV's MORPH_ELLIPSE.

    For 5x5: the three middle rows are full, the top and bottom rows only their centre.
    """
    if size < 1:
        raise ValueError("kernel size must be >= 1")
    radius = size // 2
    kernel = np.zeros((size, size), dtype=bool)
    for row in range(size):
        dy = row - radius
        if abs(dy) <= radius:
            half_width = int(round(radius * np.sqrt(max(radius * radius - dy * dy, 0)) / max(radius, 1)))
            kernel[row, max(radius - half_width, 0) : min(radius + half_width + 1, size)] = True
    return kernel


def binary_closing(mask: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Dilation then erosion, once each.

    The erosion treats the outside of the image as foreground, so objects touching
    the border are not eaten away by it (scipy's own binary_closing would).
    """
    dilated = ndimage.binary_dilation(mask, structure=kernel, border_value=0)
    return ndimage.binary_erosion(dilated, structure=kernel, border_value=1)


def otsu_mask(gray: np.ndarray, kernel_size: int = 5, foreground: Literal["dark", "bright"] = "dark") -> np.ndarray:
    """Closed Otsu foreground mask of a uint8 grey image.

    ``bright``: pixels > t* are foreground, the paper's literal rule. ``dark`` (default):
    pixels <= t* are foreground, which is what isolates stained cells on a bright-field
    background; both give the same partition, only which side is kept differs.
    """
    threshold = otsu_threshold(gray)
    mask = gray > threshold if foreground == "bright" else gray <= threshold
    return binary_closing(mask, elliptical_kernel(kernel_size))


def hybrid_otsu(
    image: Image.Image,
    mode: Literal["masked", "mask"] = "masked",
    kernel_size: int = 5,
    foreground: Literal["dark", "bright"] = "dark",
) -> Image.Image:
    """The hybrid-Otsu transform of method B: a 3-channel PIL image.

    ``masked``: the grey image inside the closed Otsu mask, 0 outside, replicated to RGB.
    ``mask``: the mask itself (255 = foreground) replicated to RGB.
    """
    if mode not in ("masked", "mask"):
        raise ValueError(f"hybrid_otsu mode must be 'masked' or 'mask', got {mode!r}")
    if foreground not in ("dark", "bright"):
        raise ValueError(f"hybrid_otsu foreground must be 'dark' or 'bright', got {foreground!r}")
    gray = np.asarray(image.convert("L"), dtype=np.uint8)
    mask = otsu_mask(gray, kernel_size, foreground)
    out = mask.astype(np.uint8) * 255 if mode == "mask" else np.where(mask, gray, 0).astype(np.uint8)
    return Image.fromarray(out, mode="L").convert("RGB")


class HybridOtsu:
    """Picklable transform step (for DataLoader workers) wrapping :func:`hybrid_otsu`.

    ``transforms.Pipeline`` runs it on the image already resized to the network's input
    size (the paper's order: resize, grey, Otsu, closing), then pads and fills with
    ``background``, the value outside the mask, so no beige border surrounds the black.
    """

    background = (0, 0, 0)

    def __init__(self, mode: str = "masked", kernel_size: int = 5, foreground: str = "dark") -> None:
        self.mode, self.kernel_size, self.foreground = mode, kernel_size, foreground

    def __call__(self, image: Image.Image) -> Image.Image:
        return hybrid_otsu(image, self.mode, self.kernel_size, self.foreground)

    def __repr__(self) -> str:
        return f"HybridOtsu(mode={self.mode!r}, kernel_size={self.kernel_size}, foreground={self.foreground!r})"

"""What bench/quality.py does to a capture: blur it, over-expose its specimen, expose its bright
empty background just to the top or past it, and save it otherwise (JPEG, other sensor sizes);
and the kind of stain it shows."""

from __future__ import annotations

import cv2
import numpy as np

from specimen_id import quality

BLUR = 0.015  # sigma, share of the longer side
STRUCTURED = 80  # percentile of local contrast above which a pixel is structure
BAND = 0.05  # share of the range around the background's brightness that is background
EMPTY = 0.3  # a background's local contrast is below this share of the structure's (95th pct)


def stain_of(rgb) -> str:
    rgb = rgb.astype(np.float32) / quality.sensor_top(rgb)
    if rgb.ndim == 3 and np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean() > 2 / 255:
        return "stained (colour)"
    return "brightfield" if np.median(rgb) > 0.5 else "fluorescence"


def blurred(pixels):
    return cv2.GaussianBlur(pixels, (0, 0), BLUR * max(pixels.shape[:2]))


def brightest(pixels):
    return (pixels.max(axis=2) if pixels.ndim == 3 else pixels).astype(np.float32)


def over_exposed(pixels, background: float | None):
    """The gain that clips half of the specimen's most structured pixels; None when it is no
    gain. On a bright empty `background` (brightfield: bright_empty_background) the specimen is
    what absorbs the light: its structured pixels darker than the background."""
    top = quality.sensor_top(pixels)
    bright = brightest(pixels)
    contrast = local_contrast(bright)
    structure = (contrast >= np.percentile(contrast, STRUCTURED)) & (bright < top)
    if background is not None:
        structure &= bright < background - BAND * top
    if np.count_nonzero(structure) < 10:
        return None
    gain = top / max(float(np.median(bright[structure])), 1.0)
    return gained(pixels, gain) if gain > 1.05 else None


def white_background(pixels, background: float | None):
    """A field on a bright empty `background` exposed so that the background just reaches the
    top; None for other kinds."""
    return None if background is None else gained(pixels, quality.sensor_top(pixels) / background)


def bright_empty_background(pixels) -> float | None:
    """The brightness of a bright, empty background (brightfield), None where there is none:
    the most common brightness, above half the range, over pixels as flat as a background is.
    A surface whose texture is the specimen (a speckled metal under a confocal microscope) is
    not a background: clipping half of it is over-exposure."""
    top = quality.sensor_top(pixels)
    if pixels.ndim == 3 and stain_of(pixels) == "stained (colour)":
        return None
    bright = brightest(pixels)
    counts, edges = np.histogram(bright, bins=256, range=(0, top + 1))
    mode = float(max(edges[counts.argmax()], 1))  # (8-bit: the exact level, which the gain brings to the top)
    if mode <= 0.5 * top or np.median(bright) <= 0.5 * top:
        return None
    contrast = local_contrast(bright)
    flat = np.median(contrast[np.abs(bright - mode) < BAND * top]) < EMPTY * np.percentile(contrast, 95)
    return mode if flat else None


def local_contrast(bright):
    mean, mean_sq = cv2.blur(bright, (7, 7)), cv2.blur(bright * bright, (7, 7))
    return np.sqrt(np.maximum(mean_sq - mean * mean, 0))


def gained(pixels, gain):
    return np.clip(np.rint(pixels.astype(np.float64) * gain), 0, quality.sensor_top(pixels)).astype(pixels.dtype)


def jpeg(pixels, quality_=75):
    if pixels.dtype != np.uint8:  # JPEG holds 8 bits
        return None
    bgr = pixels[:, :, ::-1] if pixels.ndim == 3 else pixels
    decoded = cv2.imdecode(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality_])[1], cv2.IMREAD_UNCHANGED)
    return decoded[:, :, ::-1] if decoded.ndim == 3 else decoded


def resized(pixels, factor):
    size = (max(1, round(pixels.shape[1] * factor)), max(1, round(pixels.shape[0] * factor)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)


# a capture of the same field saved as JPEG, or taken by a sensor of half or twice the pixels
RESAVED = {"as JPEG 75": jpeg, "halved": lambda x: resized(x, 0.5), "enlarged 2x": lambda x: resized(x, 2)}

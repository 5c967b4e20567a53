"""The quality gate at intake: is a capture sharp, well exposed and large enough to identify?

Focus is the variance of the Laplacian on a normalised grey image: the field is stretched from
its 0.1st to its 99.9th percentile onto 0..1 (so gain, bit depth and stain do not change the
figure) and resized to 512 px on its long side (so the figure describes the field, not the
sensor's resolution). Exposure is the share of pixels clipped at the bottom or top of the
image's own range (0 and 255 for 8-bit, 0 and 65535 for 16-bit)."""

from __future__ import annotations

import numpy as np

# Limits, stored as database settings (`specimen-id config`), chosen from the real data: the 16
# images in data/ and the 664 DSB 2018 fields in ../shared/data (fluorescence, brightfield,
# H&E). Focus (on a 0..255 scale) of those 680 real fields: 12.3 at the lowest, 32 at the 5th
# percentile, 104 median. Blurred by a Gaussian of sigma 1.5 / 2 / 3 px: medians 15 / 12 / 8.7,
# so a limit of 10 refuses none of the real fields and 24 / 41 / 58 % of the blurred ones
# (sparse fields hold little detail even when sharp: focus alone cannot tell them from blurred
# dense ones). Up to 86 % black pixels is normal in fluorescence (a black background): only a
# nearly all-black field is refused. Saturated pixels: at most 3.0 % in the real fields;
# scaled by a gain of 3, 25 % of them exceed the 5 % limit (dim fields stay unsaturated).
LIMITS = {"min_focus": 10.0, "max_dark_clipped": 0.95, "max_bright_clipped": 0.05, "min_side": 64}
SIDE = 512
HIST_BINS = 1024


def measure(pixels: np.ndarray) -> dict:
    """focus, dark_clipped, bright_clipped (shares 0..1), width, height of decoded pixels."""
    import cv2

    top = 65535 if pixels.dtype == np.uint16 else 255 if pixels.dtype == np.uint8 else None
    dark = bright = 0.0
    if top is not None:
        channels = np.ascontiguousarray(pixels[:, :, :3]) if pixels.ndim == 3 else pixels
        # black: every colour channel at 0; saturated: any channel at the top (inRange is one
        # vectorised pass, where numpy's all/any would make two full boolean copies)
        n = 1 if channels.ndim == 2 else 3
        total = channels.shape[0] * channels.shape[1]
        dark = cv2.countNonZero(cv2.inRange(channels, (0,) * n, (0,) * n)) / total
        bright = 1 - cv2.countNonZero(cv2.inRange(channels, (0,) * n, (top - 1,) * n)) / total
    h, w = pixels.shape[:2]
    # the rest on the channels' mean at the working size: grey first makes the resize a third
    # of the work (by cv2: numpy's mean over the last axis is 6x slower), and in float, as
    # rounding to integer levels adds quantisation noise that dim fields' stretch would amplify
    grey = (pixels[:, :, :3] if pixels.ndim == 3 else pixels).astype(np.float32)
    if grey.ndim == 3:
        grey = cv2.transform(grey, np.full((1, grey.shape[2]), 1 / grey.shape[2], np.float32))
    scale = SIDE / max(h, w)
    if scale < 1:
        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))),
                          interpolation=cv2.INTER_AREA)
    low, high = _percentiles(grey, (0.1, 99.9))
    grey = np.clip((grey - low) / (high - low), 0, 1) if high > low else np.zeros_like(grey)
    # on the 0..255 scale people know from the usual variance-of-Laplacian rule of thumb
    focus = float(cv2.Laplacian(grey.astype(np.float32) * 255, cv2.CV_32F).var())
    return {"focus": round(focus, 3), "dark_clipped": round(dark, 6),
            "bright_clipped": round(bright, 6), "width": int(w), "height": int(h)}


def _percentiles(grey: np.ndarray, q) -> tuple[float, float]:
    """Percentiles of a float image from a histogram of HIST_BINS between its extremes: within
    a bin of numpy's (focus within 4% on the real fields) at a sixth of the cost."""
    import cv2

    lo, hi, _, _ = cv2.minMaxLoc(grey)
    if hi <= lo:
        return lo, hi
    width = (hi - lo) / HIST_BINS  # one more bin above, as OpenCV's upper edge is exclusive
    counts = cv2.calcHist([grey], [0], None, [HIST_BINS + 1], [lo, hi + width]).ravel()
    bins = np.searchsorted(np.cumsum(counts) / grey.size, np.asarray(q) / 100)
    return tuple(np.minimum(lo + (bins + 0.5) * width, hi))


def limits(db) -> dict:
    """The database's limits (settings, defaulting to LIMITS)."""
    return {key: db.setting(key) for key in LIMITS}


def gate(db, capture, allow_low_quality: bool = False) -> None:
    """Refuse a capture for enrolment when it is below the database's limits."""
    from .errors import LowQuality

    found = problems(capture.quality, limits(db))
    if found and not allow_low_quality:
        raise LowQuality(capture.name, "; ".join(found) + " (use --allow-low-quality to enrol it anyway)")


def problems(measures: dict, limits_: dict) -> list[str]:
    """What is wrong with a capture, one phrase each; empty when it passes."""
    found = []
    if measures["focus"] < limits_["min_focus"]:
        found.append(f"out of focus (focus {measures['focus']:.4g} < min_focus {limits_['min_focus']:g})")
    if measures["dark_clipped"] > limits_["max_dark_clipped"]:
        found.append(f"under-exposed ({measures['dark_clipped']:.1%} of pixels black > "
                     f"max_dark_clipped {limits_['max_dark_clipped']:g})")
    if measures["bright_clipped"] > limits_["max_bright_clipped"]:
        found.append(f"over-exposed ({measures['bright_clipped']:.1%} of pixels saturated > "
                     f"max_bright_clipped {limits_['max_bright_clipped']:g})")
    if min(measures["width"], measures["height"]) < limits_["min_side"]:
        found.append(f"too small ({measures['width']}x{measures['height']}, shorter side < "
                     f"min_side {limits_['min_side']})")
    return found

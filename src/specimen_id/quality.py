"""The quality gate at intake: would a person at the microscope take this capture again?

Every measure describes the field, not the sensor: it is taken on the grey image brought to
SIDE px on its long side and stretched from its 0.1st to its 99.9th percentile onto 0..1, so
gain, bit depth, stain and resolution do not change it. A smaller capture is measured as it
is (enlarging it would blur it): below about 128 px a pixel is wider than the blur the gate is
fitted to see, so there focus is judged by `blur` alone and mild blur passes.

- Focus is judged on the structure there is, by two measures that must agree before a capture
  is called out of focus. `edge_width`: how wide the sharpest tenth of its strong edges are (the
  local step over the steepest gradient across it), as a share of the long side; a blurred edge
  is wider, whatever the content. `blur`: how little the image changes when blurred once more
  (Crete-Roffet's "blur effect", 0 sharp to 1 blurred); coarse structure in focus has wide edges
  but still changes. Each alone refuses some sharp kinds (sparse nuclei, soft tissue under
  vignetting); together they refuse blur and leave sharp captures of every kind measured.
- Over-exposure is clipping that destroys detail of the specimen (`clipped_detail`): the share
  of the specimen's area at the sensor's top. The background is neither counted nor divided
  by: the most common brightness (a black background), or, where that is white (correct in
  brightfield), the white plateau that is wide somewhere and reaches the image's edge.
- A white background is correct where it just reaches the top: then much of it lies a little
  below the top, with its noise. `white_clipped`, the share of the white at the top, tells one
  clipped solid, which takes the pale parts of the specimen with it.
- Under-exposure is a nearly all-black field (`dark_clipped`); a black background is normal.
- Size: the identification works from MIN_SIDE px (bench/quality.py measures it).

bench/quality.py fits the limits and reports them on image kinds not used for fitting."""

from __future__ import annotations

import numpy as np

# Limits, stored as database settings (`specimen-id config`); bench/quality.py says what they
# were chosen on and what they refuse.
LIMITS = {"max_edge_width": 0.028, "max_blur": 0.55, "max_clipped_detail": 0.125, "max_white_clipped": 0.9,
          "max_dark_clipped": 0.95, "min_side": 32}
SIDE = 256
HIST_BINS = 1024
STRONG_EDGE = 0.2  # a step of a fifth of the stretched range: an edge, not noise
EDGE_WINDOW = 0.08  # the step is read over this share of the long side (wider than any blur judged)
BLUR_BOX = 7  # px at SIDE: the re-blur of the blur effect
PLATEAU = 0.03  # a background plateau is wider than a disc of this radius (share of the long side)
BANDS = 20  # brightness bands of 5% of the range: the background is the most common one


def measure(pixels: np.ndarray, file_size: tuple[int, int] | None = None) -> dict:
    """edge_width, blur, clipped_detail, white_clipped, dark_clipped (shares 0..1), width and
    height (the file's own `file_size` when the pixels were shrunk after decoding, see
    images.WORK_SIDE)."""
    import cv2

    h, w = pixels.shape[:2]
    channels = np.ascontiguousarray(pixels[:, :, :3]) if pixels.ndim == 3 else pixels
    top = sensor_top(pixels)
    # grey first makes the resize a third of the work (by cv2: numpy's mean over the last axis
    # is 6x slower), and in float, as rounding to integer levels adds steps a stretch amplifies
    grey = channels.astype(np.float32)
    if top is None:  # float pixels: a NaN or infinity is no light at all
        grey = np.nan_to_num(grey, nan=0.0, posinf=0.0, neginf=0.0)
    if grey.ndim == 3:
        grey = cv2.transform(grey, np.full((1, grey.shape[2]), 1 / grey.shape[2], np.float32))
    size = _working_size(w, h)
    small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA) if size != (w, h) else grey
    low, high = _percentiles(small, (0.1, 99.9))
    stretched = (np.clip((small - low) / (high - low), 0, 1) if high > low else np.zeros_like(small)).astype(np.float32)
    dark = clipped = white_clipped = 0.0
    if top is not None:
        n = 1 if channels.ndim == 2 else 3
        # black: every colour channel at 0; saturated: any channel at the top (inRange is one
        # vectorised pass, where numpy's all/any would make two full boolean copies)
        dark = cv2.countNonZero(cv2.inRange(channels, (0,) * n, (0,) * n)) / (w * h)
        saturated = 255 - cv2.inRange(channels, (0,) * n, (top - 1,) * n)
        if cv2.countNonZero(saturated):
            darkest = _darkest(channels)
            white_background = cv2.calcHist([darkest], [0], None, [BANDS], [0, top + 1]).ravel().argmax() == BANDS - 1
            clipped = _clipped_detail(saturated, darkest, white_background, small, top)
            white_clipped = _white_clipped(darkest, top) if white_background else 0.0
    return {"edge_width": round(_edge_width(stretched), 5), "blur": round(_blur_effect(stretched), 4),
            "clipped_detail": round(clipped, 6), "white_clipped": round(white_clipped, 4), "dark_clipped": round(dark, 6),
            "width": int((file_size or (w, h))[0]), "height": int((file_size or (w, h))[1])}


def sensor_top(pixels: np.ndarray) -> int | None:
    """The sensor's top level for integer pixels (saturation); None for float pixels."""
    return 65535 if pixels.dtype == np.uint16 else 255 if pixels.dtype == np.uint8 else None


def _working_size(w: int, h: int) -> tuple[int, int]:
    scale = min(1.0, SIDE / max(h, w))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _edge_width(grey: np.ndarray) -> float:
    """The 10th percentile of strong edges' widths (step / steepest slope), as a share of the
    long side; 1.0 when there is no strong edge at all."""
    import cv2

    smooth = cv2.GaussianBlur(grey, (0, 0), 1.0)  # below a pixel's step: noise is not an edge
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)
    slope = cv2.magnitude(gx, gy)
    window = np.ones((max(3, int(EDGE_WINDOW * max(grey.shape)) | 1),) * 2, np.uint8)
    step = cv2.dilate(smooth, window) - cv2.erode(smooth, window)
    ridge = (slope >= cv2.dilate(slope, np.ones((3, 3), np.uint8))) & (step > STRONG_EDGE) & (slope > 0)
    if np.count_nonzero(ridge) < 20:
        return 1.0
    return float(np.percentile(step[ridge] / slope[ridge], 10) / max(grey.shape))


def _blur_effect(grey: np.ndarray) -> float:
    """Crete-Roffet et al. 2007: the share of neighbour differences a further blur leaves,
    the worse of the two axes (0 sharp, 1 blurred)."""
    import cv2

    worst = 0.0
    for axis, box in ((0, (1, BLUR_BOX)), (1, (BLUR_BOX, 1))):  # cv2's box is (width, height)
        reblurred = cv2.blur(grey, box)
        d_image = np.abs(np.diff(grey, axis=axis))
        d_blurred = np.abs(np.diff(reblurred, axis=axis))
        total = float(d_image.sum())
        lost = float(np.maximum(0, d_image - d_blurred).sum())
        worst = max(worst, (total - lost) / total if total > 0 else 1.0)
    return worst


def _clipped_detail(saturated: np.ndarray, darkest: np.ndarray, white_background: bool, grey: np.ndarray,
                    top: int) -> float:
    """The share of the specimen at the sensor's top. The background is not specimen: the
    field's most common brightness (black in fluorescence, the tissue's tone where it fills the
    field) or, where that is white, the white plateau reaching the image's edge."""
    import cv2

    size = grey.shape[::-1]
    clipped = cv2.resize(saturated, size, interpolation=cv2.INTER_AREA) > 127
    if not clipped.any():
        return 0.0
    if white_background:
        # white in every channel (a stain clipped in one or two channels is specimen), wide
        # somewhere, and reaching the image's edge; with the narrow gaps joined to it
        white = (cv2.resize(darkest, size, interpolation=cv2.INTER_AREA) >= _white_level(top)).astype(np.uint8)
        radius = max(1, round(PLATEAU * max(size)))
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
        wide = cv2.morphologyEx(white, cv2.MORPH_OPEN, disc) > 0
        _, labels = cv2.connectedComponents(white, connectivity=8)
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        specimen = ~np.isin(labels, np.intersect1d(np.unique(labels[wide]), edge[edge > 0]))
    else:
        levels = cv2.calcHist([grey], [0], None, [BANDS], [0, top + 1]).ravel()
        mode = (levels.argmax() + 0.5) * (top + 1) / BANDS
        specimen = clipped | (np.abs(grey - mode) > (top + 1) / BANDS)
    area = np.count_nonzero(specimen)
    if area < 0.01 * specimen.size:  # all background: a field blown out to white, or one of no specimen
        return float(np.count_nonzero(clipped) / clipped.size)
    return float(np.count_nonzero(clipped & specimen) / area)


def _darkest(channels: np.ndarray) -> np.ndarray:
    """The darkest colour channel of each pixel (cv2's per-plane minimum: numpy's over the last
    axis is many times slower on a large capture)."""
    import cv2

    if channels.ndim == 2:
        return channels
    planes = cv2.split(channels)
    darkest = planes[0]
    for plane in planes[1:]:
        darkest = cv2.min(darkest, plane)
    return darkest


def _white_clipped(darkest: np.ndarray, top: int) -> float:
    """The share of the white (white in every channel) at the sensor's top. A background that
    just reaches the top is white with its noise: much of it lies a little below the top. One
    clipped solid is at the top nearly all over, and the pale parts of the specimen with it. A
    share of counts, so the capture's size and its JPEG noise change it little."""
    import cv2

    white = cv2.inRange(darkest, _white_level(top), top)
    # at the top in every channel: one colour clipped is a white balance, not a blown light
    return cv2.countNonZero(cv2.inRange(darkest, top, top)) / max(cv2.countNonZero(white), 1)


def _white_level(top: int) -> int:
    """The lowest level of the top brightness band: white."""
    return int(np.ceil((1 - 1 / BANDS) * top))


def _percentiles(grey: np.ndarray, q) -> tuple[float, float]:
    """Percentiles of a float image from a histogram of HIST_BINS between its extremes: within
    a bin of numpy's at a sixth of the cost."""
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
    return {key: db.setting(key, default) for key, default in LIMITS.items()}


def gate(db, capture, allow_low_quality: bool = False) -> None:
    """Refuse a capture for enrolment when it is below the database's limits."""
    from .errors import LowQuality

    found = problems(capture.quality, limits(db))
    if found and not allow_low_quality:
        raise LowQuality(capture.name, "; ".join(found) + " (use --allow-low-quality to enrol it anyway)")


def problems(measures: dict, limits_: dict) -> list[str]:
    """What is wrong with a capture, one phrase each with the measure, the limit and what to
    do at the microscope; empty when it passes. Measures stored by an older version (without
    these keys) are not judged again."""
    found = []
    if "edge_width" not in measures:
        return found
    if measures["edge_width"] > limits_["max_edge_width"] and measures["blur"] > limits_["max_blur"]:
        found.append(f"out of focus (edge width {measures['edge_width']:.1%} of the field > "
                     f"max_edge_width {limits_['max_edge_width']:g}, blur {measures['blur']:.2f} > "
                     f"max_blur {limits_['max_blur']:g}): refocus")
    if measures["clipped_detail"] > limits_["max_clipped_detail"]:
        found.append(f"over-exposed ({measures['clipped_detail']:.1%} of the specimen saturated > "
                     f"max_clipped_detail {limits_['max_clipped_detail']:g}): lower the exposure or the light")
    elif measures.get("white_clipped", 0.0) > limits_["max_white_clipped"]:  # (measures stored before it have none)
        found.append(f"over-exposed (the white background is clipped solid: {measures['white_clipped']:.1%} of it "
                     f"at the top > max_white_clipped {limits_['max_white_clipped']:g}): lower the exposure or "
                     f"the light until the background is only just white")
    if measures["dark_clipped"] > limits_["max_dark_clipped"]:
        found.append(f"under-exposed ({measures['dark_clipped']:.1%} of pixels black > "
                     f"max_dark_clipped {limits_['max_dark_clipped']:g}): raise the exposure or the light")
    if min(measures["width"], measures["height"]) < limits_["min_side"]:
        found.append(f"too small ({measures['width']}x{measures['height']}, shorter side < "
                     f"min_side {limits_['min_side']}): capture at a higher resolution")
    return found

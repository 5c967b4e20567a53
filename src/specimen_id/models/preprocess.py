"""How decoded pixels become a vector. Changing anything here or in the pooling changes
PREPROCESS_VERSION, which is part of every model_id, so old embeddings are never compared with
new ones (the database asks for `reindex`).

Policy (version 3):
- Deeper images (16-bit, float) are stretched linearly from their 0.1st to 99.9th percentile
  (all channels together, so colour balance is kept) onto 0..255: microscope cameras often fill
  only 10 or 12 of 16 bits, and a fixed /65535 would leave such fields almost black.
- Grey images are repeated into three channels; alpha is dropped (grey+alpha keeps the grey).
- The whole field is resized to the square input (INTER_AREA), never cropped: a crop would throw
  away part of the field that identifies the specimen.
- Then its contrast is stretched from the 1st to the 99.8th percentile of its levels (all
  channels together) onto 0..255, as for the local features. A dim fluorescence field filling
  40 of 256 levels otherwise reaches the network as noise and JPEG blocks (and int8 arithmetic
  loses more of it). With regional pooling (below) every true field of bench/accuracy.py's
  530 queries of enrolled fields is in the 100-capture shortlist; before, 3 were not.
- The last feature map is pooled with GeM (p = 3), which weights the strongest responses
  (nuclei) over the empty background; on DSB 2018 re-captures it ranks the right field first
  for 0.56 of queries against 0.52 for average pooling (version 1).
- Regional pooling (version 3): GeM over the whole map and over every window of REGIONS
  cells, each unit-normalised, summed (R-MAC's recipe). A re-capture shifted by a stage sees
  part of the field anew; the windows it shares with the enrolled capture still agree. On
  bench/accuracy.py the worst rank of a true field among 532 captures falls from 175 to 99.
"""

from __future__ import annotations

import functools

import numpy as np

PREPROCESS_VERSION = 3
REGIONS = (5, 4)  # sides of the square windows of the feature map (7x7 at 224 px) pooled apart


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """Any decoded capture to an HxWx3 uint8 RGB array, by the policy above."""
    if pixels.ndim == 3 and pixels.shape[2] in (2, 4):
        pixels = pixels[:, :, :-1]  # drop alpha
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.dtype != np.uint8:
        sample = pixels[:: max(1, pixels.shape[0] // 512), :: max(1, pixels.shape[1] // 512)]
        lo, hi = np.percentile(sample, (0.1, 99.9))
        scale = 255.0 / max(float(hi - lo), 1e-6)
        pixels = np.clip((pixels.astype(np.float32) - lo) * scale, 0, 255).astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels


STRETCH = (1.0, 99.8)  # percentiles mapped onto 0 and 255, here and in local_features (both versions)


def to_input(pixels: np.ndarray, size: int, mean, std) -> np.ndarray:
    """One capture to a CHW float32 array: resized, stretched and normalised per channel."""
    import cv2

    rgb = cv2.resize(to_rgb8(pixels), (size, size), interpolation=cv2.INTER_AREA)
    # the percentiles from the histogram of the 256 levels, and stretch and normalisation as
    # one lookup table per channel: a fraction of numpy's percentile and float arithmetic
    cumulative = np.cumsum(np.bincount(rgb.ravel(), minlength=256)) / rgb.size
    low, high = np.searchsorted(cumulative, np.asarray(STRETCH) / 100)
    levels = np.clip((np.arange(256, dtype=np.float32) - low) / max(float(high - low), 1.0), 0, 1)
    table = (levels[:, None] - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return cv2.LUT(rgb, table[None].astype(np.float32)).transpose(2, 0, 1)


def pooled(fmap: np.ndarray) -> np.ndarray:
    """(n, c, h, w) feature maps to (n, c) unit vectors: regional GeM, as described above."""
    from ..products import matmul

    n, c, h, w = fmap.shape
    cubed = np.maximum(fmap, 1e-6, dtype=np.float32)
    cubed = cubed * cubed * cubed  # GeM with p = 3: the cube root of each region's mean cube
    # every region's mean at once: one matrix product with the regions' averaging weights
    regional = matmul(cubed.reshape(n * c, h * w), _region_weights(h, w))
    regional = np.cbrt(regional).reshape(n, c, -1)  # (n, c, regions)
    regional /= np.maximum(np.linalg.norm(regional, axis=1, keepdims=True), 1e-12)
    total = regional.sum(axis=2)
    return total / np.maximum(np.linalg.norm(total, axis=1, keepdims=True), 1e-12)


@functools.lru_cache
def _region_weights(h: int, w: int) -> np.ndarray:
    """(h * w, regions): column j averages region j (the whole map, then every window)."""
    windows = [(0, 0, h, w)] + [(y, x, side, side) for side in REGIONS if side < min(h, w)
                                for y in range(h - side + 1) for x in range(w - side + 1)]
    weights = np.zeros((h, w, len(windows)), np.float32)
    for j, (y, x, side_h, side_w) in enumerate(windows):
        weights[y:y + side_h, x:x + side_w, j] = 1 / (side_h * side_w)
    return weights.reshape(h * w, len(windows))

"""Local features and spatial verification: does the query show the same arrangement as a
candidate, up to the shift, rotation and scale a stage and focus cause?

Pooled CNN vectors say "a field of nuclei"; identity lives in where the nuclei are. Two kinds of
evidence, each computed once per capture at enrolment and stored:
- SIFT keypoints (blob centres, which is what nuclei look like), paired as mutual nearest
  neighbours (Lowe's ratio test throws away most true pairs when every nucleus looks like its
  neighbour), with a similarity transform fitted by RANSAC; the pairs that agree with it
  (inliers) are evidence, and the transform is one way to lay the captures over each other.
- A small high-passed thumbnail. The captures are laid over each other by every alignment at
  hand (the SIFT transform, and the shift at which each one's centre best matches the other:
  OpenCV's matchTemplate) and their thumbnails correlated over the overlap; the best of these
  is the aligned correlation. Sparse fields carry identity here: two or three nuclei give
  SIFT nothing to pair (alike blobs), but once laid over each other every nucleus, its shape
  and the faint background between them must coincide too. High-passing the thumbnail takes
  out uneven illumination, whose ramps would otherwise dominate the correlation of flat
  brightfield fields.

Measured on DSB 2018 re-captures (bench/accuracy.py): without smoothing, SIFT on stretched dark
fields locks onto JPEG 8x8 block edges, which "match" between unrelated captures with hundreds
of inliers; a Gaussian blur of 1.5 px at 512 px (BLUR_PX at the working size) removes that.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

FEATURE_VERSION = "sift-4"
# Longer side the image is brought to before detection. SIFT's cost grows with the area: at 384
# px it is 54% of its cost at 512 (the heaviest step of enrolment, see bench/speed.py), and
# bench/accuracy.py identified as well or better (test half: top-1 0.958 against 0.951).
WORK_SIZE = 384
BLUR_PX = 1.125  # smoothing before detection, at WORK_SIZE
THUMB_SIZE = 96  # longer side of the thumbnail kept for aligned correlation
# Structure smoother than this (sigma, px at THUMB_SIZE) is taken out of the thumbnail: uneven
# light. Nuclei (a few px at this size) and their arrangement stay.
HIGHPASS_PX = 12.0
# Central share of one thumbnail looked for in the other: shifts up to (1 - TEMPLATE) / 2 of the
# field either way are found this way (bench/accuracy.py's re-captures move up to 19%).
TEMPLATE = 0.7
MIN_OVERLAP = 0.3  # share of the candidate the aligned query must cover to be correlated
MAX_FEATURES = 800
RANSAC_PX = 3.0  # reprojection tolerance at WORK_SIZE
# Most shortlisted candidates are other fields, whose few chance pairs keep RANSAC running to
# its limit: 1,000 tries cost a quarter of 4,000, and bench/accuracy.py's answers were the same.
RANSAC_ITERATIONS = 1000
SCALE_RANGE = (0.8, 1.25)  # a re-capture's zoom stays near 1


class Verification(NamedTuple):
    inliers: int  # keypoint pairs that agree with the fitted similarity transform
    correlation: float  # of the two thumbnails at their best alignment, over the overlap
    pairs: np.ndarray  # (inliers, 2, 2) query and candidate points, at WORK_SIZE


@dataclass(frozen=True)
class LocalFeatures:
    points: np.ndarray  # (n, 2) float32, at WORK_SIZE
    descriptors: np.ndarray  # (n, 128) uint8, SIFT
    thumbnail: np.ndarray  # float16, the detection image at THUMB_SIZE, high-passed

    def __len__(self) -> int:
        return len(self.points)

    @cached_property
    def root_sift(self) -> np.ndarray:
        """RootSIFT (Hellinger kernel): better matching than raw SIFT for the same cost;
        computed once, as a query is verified against many candidates."""
        d = self.descriptors.astype(np.float32)
        return np.sqrt(d / np.maximum(d.sum(axis=1, keepdims=True), 1e-6))

    @cached_property
    def thumb32(self) -> np.ndarray:
        """The thumbnail as OpenCV's correlation wants it (float32), converted once."""
        return self.thumbnail.astype(np.float32)

    @cached_property
    def centre(self) -> tuple[np.ndarray, int, int] | None:
        """The central TEMPLATE share of the thumbnail and its offset, looked for in other
        captures' thumbnails; None when too small or flat (nothing to look for)."""
        h, w = self.thumb32.shape
        th, tw = int(h * TEMPLATE), int(w * TEMPLATE)
        y0, x0 = (h - th) // 2, (w - tw) // 2
        template = self.thumb32[y0:y0 + th, x0:x0 + tw]
        return (template, x0, y0) if min(th, tw) >= 8 and float(template.std()) > 1e-3 else None

    def to_bytes(self) -> bytes:
        return (np.array([len(self), *self.thumbnail.shape], np.int32).tobytes()
                + self.points.astype(np.float32).tobytes()
                + self.descriptors.astype(np.uint8).tobytes() + self.thumbnail.astype(np.float16).tobytes())

    @classmethod
    def from_bytes(cls, blob: bytes) -> "LocalFeatures":
        n, h, w = (int(v) for v in np.frombuffer(blob, np.int32, 3))
        offset = 12
        points = np.frombuffer(blob, np.float32, 2 * n, offset=offset).reshape(n, 2)
        offset += 8 * n
        descriptors = np.frombuffer(blob, np.uint8, 128 * n, offset=offset).reshape(n, 128)
        thumbnail = np.frombuffer(blob, np.float16, h * w, offset=offset + 128 * n).reshape(h, w)
        return cls(points, descriptors, thumbnail)


_sift = None


def extract(pixels: np.ndarray) -> LocalFeatures:
    """SIFT keypoints of a capture, after the same contrast policy as the CNN input."""
    import cv2

    from .models.preprocess import STRETCH, to_rgb8

    global _sift
    if _sift is None:
        _sift = cv2.SIFT_create(nfeatures=MAX_FEATURES, contrastThreshold=0.02)
    grey = cv2.cvtColor(to_rgb8(pixels), cv2.COLOR_RGB2GRAY).astype(np.float32)
    h, w = grey.shape
    scale = WORK_SIZE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    grey = cv2.GaussianBlur(grey, (0, 0), BLUR_PX)
    # Stretch so that dim fluorescence fields give as many keypoints as bright ones.
    lo, hi = np.percentile(grey, STRETCH)
    grey = np.clip((grey - lo) * (255 / max(hi - lo, 1)), 0, 255).astype(np.uint8)
    f = THUMB_SIZE / WORK_SIZE
    thumbnail = cv2.resize(grey, (max(1, round(size[0] * f)), max(1, round(size[1] * f))),
                           interpolation=cv2.INTER_AREA).astype(np.float32)
    thumbnail = (thumbnail - cv2.GaussianBlur(thumbnail, (0, 0), HIGHPASS_PX)).astype(np.float16)
    keypoints, descriptors = _sift.detectAndCompute(grey, None)
    if descriptors is None:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), thumbnail)
    points = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    return LocalFeatures(points, np.clip(np.rint(descriptors), 0, 255).astype(np.uint8), thumbnail)


def verify(query: LocalFeatures, candidate: LocalFeatures) -> Verification:
    """Fit the similarity transform from query to candidate and measure how well it holds."""
    return verify_many(query, [candidate])[0]


def verify_many(query: LocalFeatures, candidates: list[LocalFeatures]) -> list[Verification]:
    """`verify` against each candidate. The descriptor comparisons of all candidates are one
    matrix product (RootSIFT vectors have unit length, so the nearest neighbour by distance is
    the one with the largest dot product): a shortlist of 100 is verified several times faster
    than pair by pair."""
    from .products import matmul

    usable = [c for c in candidates if len(c) >= 3] if len(query) >= 3 else []
    similarity = matmul(query.root_sift, np.concatenate([c.root_sift for c in usable]),
                        b_transposed=True) if usable else None
    results, start = [], 0
    for candidate in candidates:
        fit = None
        if usable and len(candidate) >= 3:
            block = similarity[:, start:start + len(candidate)]
            start += len(candidate)
            # mutual nearest neighbours (a cross-checked match), in query order
            best_candidate = block.argmax(axis=1)
            mutual = np.flatnonzero(block.argmax(axis=0)[best_candidate] == np.arange(len(query)))
            if len(mutual) >= 3:
                fit = _fit(query, candidate, mutual, best_candidate[mutual])
        transform, pairs = fit or (None, np.zeros((0, 2, 2), np.float32))
        results.append(Verification(len(pairs), _best_overlay(query, candidate, transform), pairs))
    return results


def _fit(query: LocalFeatures, candidate: LocalFeatures, qi: np.ndarray, ci: np.ndarray):
    """RANSAC similarity transform over paired keypoints: (transform, inlier pairs) or None."""
    import cv2

    src, dst = query.points[qi], candidate.points[ci]
    transform, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                                  ransacReprojThreshold=RANSAC_PX, maxIters=RANSAC_ITERATIONS)
    if transform is None:
        return None
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    if not SCALE_RANGE[0] < scale < SCALE_RANGE[1]:
        return None
    inliers = mask.ravel().astype(bool)
    return transform, np.stack([src[inliers], dst[inliers]], axis=1)


def _best_overlay(query: LocalFeatures, candidate: LocalFeatures, transform) -> float:
    """The aligned correlation: the best of the thumbnails' correlations under the SIFT
    transform (if any) and under the shift that lays each one's centre on the other."""
    a, b = query.thumb32, candidate.thumb32
    found = [0.0]
    if transform is not None:
        small = transform.astype(np.float32)
        small[:, 2] *= THUMB_SIZE / WORK_SIZE  # same rotation and zoom, translation at thumbnail scale
        found.append(_warped_correlation(a, b, small))
    shift = _locate(query, b)
    if shift is not None:
        found.append(_shifted_correlation(a, b, *shift))
    shift = _locate(candidate, a)
    if shift is not None:
        found.append(_shifted_correlation(a, b, -shift[0], -shift[1]))
    return max(found)


def _locate(features: LocalFeatures, other: np.ndarray) -> tuple[int, int] | None:
    """The shift (dx, dy) that lays the features' thumbnail centre best onto another
    thumbnail (normalised cross-correlation)."""
    import cv2

    if features.centre is None:
        return None
    template, x0, y0 = features.centre
    if template.shape[0] > other.shape[0] or template.shape[1] > other.shape[1]:
        return None
    _, _, _, (x, y) = cv2.minMaxLoc(cv2.matchTemplate(other, template, cv2.TM_CCOEFF_NORMED))
    return x - x0, y - y0


def _shifted_correlation(a: np.ndarray, b: np.ndarray, dx: int, dy: int) -> float:
    """Pearson correlation of a moved by (dx, dy) onto b, over their overlap: a shift needs no
    warp, two slices cost a fifth of `_warped_correlation`'s two warps."""
    h, w = b.shape
    x0, y0 = max(0, dx), max(0, dy)
    x1, y1 = min(w, a.shape[1] + dx), min(h, a.shape[0] + dy)
    if (x1 - x0) * (y1 - y0) < MIN_OVERLAP * h * w:
        return 0.0
    return _pearson(a[y0 - dy:y1 - dy, x0 - dx:x1 - dx], b[y0:y1, x0:x1])


def _warped_correlation(a: np.ndarray, b: np.ndarray, transform: np.ndarray) -> float:
    """Pearson correlation of a warped onto b by a similarity transform, over the overlap."""
    import cv2

    h, w = b.shape
    warped = cv2.warpAffine(a, transform, (w, h))
    inside = cv2.warpAffine(np.ones(a.shape, np.float32), transform, (w, h)) > 0.99
    if inside.mean() < MIN_OVERLAP:
        return 0.0
    return _pearson(warped[inside], b[inside])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-6))

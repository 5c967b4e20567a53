"""Local features and spatial verification: does the query show the same arrangement as a
candidate, up to the shift, rotation and scale a stage and focus cause?

Pooled CNN vectors say "a field of nuclei"; identity lives in where the nuclei are. SIFT
keypoints (blob centres, which is what nuclei look like) are paired as mutual nearest
neighbours (Lowe's ratio test throws away most true pairs when every nucleus looks like its
neighbour) and a similarity transform is fitted with RANSAC; the number of matches that agree with it
(inliers) is the evidence. With that transform the two captures are then laid over each other
and their pixels correlated (aligned correlation): a sparse field with six nuclei gives few
inliers, but if they align, every nucleus and the background between them must coincide too.
Features and a small thumbnail are computed once per capture at enrolment and stored.

Measured on DSB 2018 re-captures (bench/accuracy.py): without smoothing, SIFT on stretched dark
fields locks onto JPEG 8x8 block edges, which "match" between unrelated captures with hundreds
of inliers; a Gaussian blur of 1.5 px at 512 px (BLUR_PX at the working size) removes that.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

FEATURE_VERSION = "sift-3"
# Longer side the image is brought to before detection. SIFT's cost grows with the area: at 384
# px it is 54% of its cost at 512 (the heaviest step of enrolment, see bench/speed.py), and
# bench/accuracy.py identified as well or better (test half: top-1 0.958 against 0.951).
WORK_SIZE = 384
BLUR_PX = 1.125  # smoothing before detection, at WORK_SIZE
THUMB_SIZE = 128  # longer side of the thumbnail kept for aligned correlation
MIN_OVERLAP = 0.3  # share of the candidate the aligned query must cover to be correlated
MAX_FEATURES = 800
RANSAC_PX = 3.0  # reprojection tolerance at WORK_SIZE
SCALE_RANGE = (0.8, 1.25)  # a re-capture's zoom stays near 1


class Verification(NamedTuple):
    inliers: int  # keypoint pairs that agree with the fitted similarity transform
    correlation: float  # of the two thumbnails aligned by it, over their overlap (0 if none)
    pairs: np.ndarray  # (inliers, 2, 2) query and candidate points, at WORK_SIZE


@dataclass(frozen=True)
class LocalFeatures:
    points: np.ndarray  # (n, 2) float32, at WORK_SIZE
    descriptors: np.ndarray  # (n, 128) uint8, SIFT
    thumbnail: np.ndarray  # uint8 grey, the detection image at THUMB_SIZE

    def __len__(self) -> int:
        return len(self.points)

    @cached_property
    def root_sift(self) -> np.ndarray:
        """RootSIFT (Hellinger kernel): better matching than raw SIFT for the same cost;
        computed once, as a query is verified against many candidates."""
        d = self.descriptors.astype(np.float32)
        return np.sqrt(d / np.maximum(d.sum(axis=1, keepdims=True), 1e-6))

    def to_bytes(self) -> bytes:
        return (np.array([len(self), *self.thumbnail.shape], np.int32).tobytes()
                + self.points.astype(np.float32).tobytes()
                + self.descriptors.astype(np.uint8).tobytes() + self.thumbnail.tobytes())

    @classmethod
    def from_bytes(cls, blob: bytes) -> "LocalFeatures":
        n, h, w = (int(v) for v in np.frombuffer(blob, np.int32, 3))
        offset = 12
        points = np.frombuffer(blob, np.float32, 2 * n, offset=offset).reshape(n, 2)
        offset += 8 * n
        descriptors = np.frombuffer(blob, np.uint8, 128 * n, offset=offset).reshape(n, 128)
        thumbnail = np.frombuffer(blob, np.uint8, h * w, offset=offset + 128 * n).reshape(h, w)
        return cls(points, descriptors, thumbnail)


_sift = None


def extract(pixels: np.ndarray) -> LocalFeatures:
    """SIFT keypoints of a capture, after the same contrast policy as the CNN input."""
    import cv2

    from .models.preprocess import to_rgb8

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
    lo, hi = np.percentile(grey, (1, 99.8))
    grey = np.clip((grey - lo) * (255 / max(hi - lo, 1)), 0, 255).astype(np.uint8)
    f = THUMB_SIZE / WORK_SIZE
    thumbnail = cv2.resize(grey, (max(1, round(size[0] * f)), max(1, round(size[1] * f))),
                           interpolation=cv2.INTER_AREA)
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
    none = Verification(0, 0.0, np.zeros((0, 2, 2), np.float32))
    usable = [c for c in candidates if len(c) >= 3] if len(query) >= 3 else []
    similarity = (query.root_sift @ np.concatenate([c.root_sift for c in usable]).T) if usable else None
    results, start = [], 0
    for candidate in candidates:
        if not usable or len(candidate) < 3:
            results.append(none)
            continue
        block = similarity[:, start:start + len(candidate)]
        start += len(candidate)
        # mutual nearest neighbours (a cross-checked match), in query order
        best_candidate = block.argmax(axis=1)
        mutual = np.flatnonzero(block.argmax(axis=0)[best_candidate] == np.arange(len(query)))
        results.append(_fit(query, candidate, mutual, best_candidate[mutual]) if len(mutual) >= 3 else none)
    return results


def _fit(query: LocalFeatures, candidate: LocalFeatures, qi: np.ndarray, ci: np.ndarray) -> Verification:
    """RANSAC similarity transform over paired keypoints, then the aligned correlation."""
    import cv2

    none = Verification(0, 0.0, np.zeros((0, 2, 2), np.float32))
    src, dst = query.points[qi], candidate.points[ci]
    transform, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                                  ransacReprojThreshold=RANSAC_PX, maxIters=4000)
    if transform is None:
        return none
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    if not SCALE_RANGE[0] < scale < SCALE_RANGE[1]:
        return none
    inliers = mask.ravel().astype(bool)
    pairs = np.stack([src[inliers], dst[inliers]], axis=1)
    return Verification(int(inliers.sum()), _aligned_correlation(query, candidate, transform), pairs)


def _aligned_correlation(query: LocalFeatures, candidate: LocalFeatures, transform) -> float:
    """Pearson correlation of the query thumbnail warped onto the candidate's, over the overlap."""
    import cv2

    small = transform.copy()
    small[:, 2] *= THUMB_SIZE / WORK_SIZE  # same rotation and zoom, translation at thumbnail scale
    h, w = candidate.thumbnail.shape
    warped = cv2.warpAffine(query.thumbnail.astype(np.float32), small, (w, h))
    inside = cv2.warpAffine(np.ones(query.thumbnail.shape, np.float32), small, (w, h)) > 0.99
    if inside.mean() < MIN_OVERLAP:
        return 0.0
    a = warped[inside] - warped[inside].mean()
    b = candidate.thumbnail[inside].astype(np.float32)
    b -= b.mean()
    return float((a @ b) / (np.sqrt((a @ a) * (b @ b)) + 1e-6))

"""Local features: what spatial verification (verification.py) compares, computed once per
capture at enrolment and stored.

Pooled CNN vectors say "a field of nuclei"; identity lives in where the nuclei are. Two kinds of
evidence:
- SIFT keypoints (blob centres, which is what nuclei look like) with their descriptors.
- A small high-passed thumbnail, for laying two captures over each other and correlating them:
  sparse fields carry identity here (two or three alike nuclei give SIFT nothing to pair, but
  their shapes and the faint background between them must coincide too). High-passing takes
  out uneven illumination, whose ramps would otherwise dominate flat brightfield fields.
- The capture's size in pixels, so that where one capture lies on another can be said in
  either one's pixels, and the grain of its thumbnail (how far its values go together).

FEATURE_VERSION names this recipe; it is stored with the features, apart from the model_id,
so that a new recipe recomputes features (`reindex --features-only`), not CNN vectors.

Measured on DSB 2018 re-captures (bench/accuracy.py): without smoothing, SIFT on stretched dark
fields locks onto JPEG 8x8 block edges, which "match" between unrelated captures with hundreds
of inliers; a Gaussian blur of 1.5 px at 512 px (BLUR_PX at the working size) removes that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURE_VERSION = "sift-5"
# Longer side the image is brought to before detection. SIFT's cost grows with the area: at 384
# px it is 54% of its cost at 512 (the heaviest step of enrolment, see bench/speed.py), and
# bench/accuracy.py identified as well or better (test half: top-1 0.958 against 0.951).
WORK_SIZE = 384
BLUR_PX = 1.125  # smoothing before detection, at WORK_SIZE
THUMB_SIZE = 96  # longer side of the thumbnail kept for aligned correlation
# Structure smoother than this (sigma, px at THUMB_SIZE) is taken out of the thumbnail: uneven
# light. Nuclei (a few px at this size) and their arrangement stay.
HIGHPASS_PX = 12.0
MAX_FEATURES = 800


@dataclass(frozen=True)
class LocalFeatures:
    points: np.ndarray  # (n, 2) float32, at WORK_SIZE
    descriptors: np.ndarray  # (n, 128) uint8, SIFT
    thumbnail: np.ndarray  # float16, the detection image at THUMB_SIZE, high-passed
    size: tuple[int, int]  # (width, height) of the capture, in its own pixels
    grain: float  # squared correlation length of the thumbnail's values (see `grain`)

    def __len__(self) -> int:
        return len(self.points)

    @property
    def root_sift(self) -> np.ndarray:
        """RootSIFT (Hellinger kernel): better matching than raw SIFT for the same cost;
        computed once, as a query is verified against many candidates."""
        def make():
            d = self.descriptors.astype(np.float32)
            return np.sqrt(d / np.maximum(d.sum(axis=1, keepdims=True), 1e-6))
        return self._once("_root_sift", make)

    @property
    def thumb32(self) -> np.ndarray:
        """The thumbnail as OpenCV's correlation wants it (float32), converted once."""
        return self._once("_thumb32", lambda: self.thumbnail.astype(np.float32))

    def _once(self, key: str, make):
        """make(), kept on the instance. By hand, not by functools.cached_property: before
        Python 3.12 that holds one lock for every instance while it computes, and
        verification's threads would take turns on it (two threads making one value at once
        both get the same numbers)."""
        found = self.__dict__.get(key)
        if found is None:
            found = self.__dict__[key] = make()
        return found

    @property
    def work_shape(self) -> tuple[int, int]:
        """(height, width) of the image the keypoints were found in (longer side WORK_SIZE)."""
        return _scaled(self.size, WORK_SIZE)[::-1]

    def to_bytes(self) -> bytes:
        return (np.array([len(self), *self.thumbnail.shape, *self.size], np.int32).tobytes()
                + np.float32(self.grain).tobytes() + self.points.astype(np.float32).tobytes()
                + self.descriptors.astype(np.uint8).tobytes() + self.thumbnail.astype(np.float16).tobytes())

    @classmethod
    def from_bytes(cls, blob: bytes) -> "LocalFeatures":
        n, h, w, width, height = (int(v) for v in np.frombuffer(blob, np.int32, 5))
        grain = float(np.frombuffer(blob, np.float32, 1, offset=20)[0])
        offset = 24
        points = np.frombuffer(blob, np.float32, 2 * n, offset=offset).reshape(n, 2)
        offset += 8 * n
        descriptors = np.frombuffer(blob, np.uint8, 128 * n, offset=offset).reshape(n, 128)
        thumbnail = np.frombuffer(blob, np.float16, h * w, offset=offset + 128 * n).reshape(h, w)
        return cls(points, descriptors, thumbnail, (width, height), grain)


def _scaled(size: tuple[int, int], longer: int) -> tuple[int, int]:
    """(width, height) of an image of this size brought to this longer side."""
    scale = longer / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


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
    size = _scaled((w, h), WORK_SIZE)
    grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if WORK_SIZE < max(h, w) else cv2.INTER_LINEAR)
    grey = cv2.GaussianBlur(grey, (0, 0), BLUR_PX)
    # Stretch so that dim fluorescence fields give as many keypoints as bright ones.
    lo, hi = np.percentile(grey, STRETCH)
    grey = np.clip((grey - lo) * (255 / max(hi - lo, 1)), 0, 255).astype(np.uint8)
    thumbnail = cv2.resize(grey, _scaled((w, h), THUMB_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    thumbnail = (thumbnail - cv2.GaussianBlur(thumbnail, (0, 0), HIGHPASS_PX)).astype(np.float16)
    keypoints, descriptors = _sift.detectAndCompute(grey, None)
    if descriptors is None:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), thumbnail, (w, h),
                             grain(thumbnail))
    points = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    return LocalFeatures(points, np.clip(np.rint(descriptors), 0, 255).astype(np.uint8), thumbnail, (w, h),
                         grain(thumbnail))


def grain(thumbnail: np.ndarray) -> float:
    """Squared correlation length of a thumbnail's values, 2 <x^2> / <|grad x|^2> (as for a
    smooth random field): a big blob's pixels go together over a wide area, nuclei's over a
    few pixels. Verification counts the details a correlation rests on with it: one glare disc
    laid over another agrees on hundreds of pixels, but as one detail."""
    if min(thumbnail.shape) < 2:  # a strip: no gradient either way
        return 1.0
    t = thumbnail.astype(np.float32)
    t -= t.mean()
    gy, gx = np.diff(t, axis=0), np.diff(t, axis=1)
    return 2 * float((t * t).mean()) / max(float((gy * gy).mean() + (gx * gx).mean()), 1e-12)

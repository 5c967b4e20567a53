"""A microscope's fixed pattern: what every capture of one microscope shows at the same sensor
position, whatever the specimen (a field stop's edge, vignetting, dust on the sensor or the
optics, hot pixels, a scanner's stripes). It is the microscope's fingerprint, not the
specimen's: two different fields laid over each other at zero shift agree there, and would
look like one field.

It is estimated per query from the shortlist: the thumbnails of the captures the CNN finds
nearest to the query, one per specimen, of the query's shape (the same camera and settings).
Their per-pixel median is the pattern (each specimen's content sits elsewhere, so it drops out
of the median). The pattern is then projected out of both thumbnails before they are
correlated, and where it is strong (its pixels, dilated) they are set to zero, so they add
nothing to a correlation; keypoint pairs that sit at the same position inside it are not
evidence either.

It needs MIN_SPECIMENS such captures in the shortlist; below that (a database of a handful of
fields) no pattern is taken out, and only the spread of verified keypoints (verification.py)
tells a fixed pattern from a specimen. The estimate depends on which captures are enrolled,
never on the order in which they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE = 16  # nearest specimens whose thumbnails make the estimate
MIN_SPECIMENS = 6  # fewer than this: no estimate
# A pixel is the pattern's where the median stands this many of its own standard errors
# (1.25 / sqrt(n) for n unit-variance thumbnails of unrelated content) away from zero.
STRONG = 3.0


@dataclass(frozen=True)
class Pattern:
    median: np.ndarray  # float32, thumbnail shape: the pattern itself (unit-variance scale)
    keep: np.ndarray  # float32 0/1, thumbnail shape: 0 where the pattern dominates
    cohort: tuple = ()  # (features, cleaned thumbnail) it was estimated from: fields of this microscope

    @property
    def shape(self) -> tuple[int, int]:
        return self.median.shape

    def clean(self, thumbnail: np.ndarray) -> np.ndarray:
        """A thumbnail of this shape with the pattern projected out and its pixels zeroed;
        other shapes (another camera) are returned as they are."""
        if thumbnail.shape != self.shape:
            return thumbnail
        f = self.median
        t = thumbnail - float(thumbnail.mean())
        weight = float(np.dot(t.ravel(), f.ravel())) / max(float(np.dot(f.ravel(), f.ravel())), 1e-9)
        return ((t - weight * f) * self.keep).astype(np.float32, copy=False)

    def covers(self, points: np.ndarray, work_shape: tuple[int, int]) -> np.ndarray:
        """For points (n, 2) at the working size of a capture of this shape: inside the
        pattern's pixels?"""
        h, w = self.shape
        x = np.clip((points[:, 0] * w / work_shape[1]).astype(int), 0, w - 1)
        y = np.clip((points[:, 1] * h / work_shape[0]).astype(int), 0, h - 1)
        return self.keep[y, x] < 0.5


def estimate(captures: list) -> Pattern | None:
    """The pattern shared by these captures' thumbnails (LocalFeatures, one per specimen, of
    one shape, nearest first), or None when there are fewer than MIN_SPECIMENS."""
    import cv2

    if len(captures) < MIN_SPECIMENS:
        return None
    captures = captures[:SAMPLE]
    stack = np.stack([_unit(c.thumb32) for c in captures])
    median = np.median(stack, axis=0).astype(np.float32)
    strong = np.abs(median) > STRONG * 1.25 / np.sqrt(len(stack))
    keep = 1 - cv2.dilate(strong.astype(np.uint8), np.ones((3, 3), np.uint8))
    pattern = Pattern(median, keep.astype(np.float32))
    return Pattern(median, pattern.keep, tuple((c, pattern.clean(c.thumb32)) for c in captures))


def _unit(t: np.ndarray) -> np.ndarray:
    t = t.astype(np.float32) - float(t.mean())
    return t / (float(np.sqrt((t * t).mean())) + 1e-6)

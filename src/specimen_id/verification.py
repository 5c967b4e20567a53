"""Spatial verification: does the query show the same arrangement as a candidate, and where
does it lie on it?

From the stored local features (local_features.py) of both captures:
- SIFT keypoints paired as mutual nearest neighbours (Lowe's ratio test throws away most true
  pairs when every nucleus looks like its neighbour), with a similarity transform fitted by
  RANSAC. Its inliers are evidence, and more so the further they spread: the *spread* counts
  the cells of a GRID x GRID grid, over either capture, that hold verified pairs. Many pairs
  under one transform all over the overlap are decisive whatever else says; a few pairs
  bunched on a line, a ring or some spots are not.
- The thumbnails laid over each other by every alignment at hand (that transform, and the
  shift at which each one's centre best matches the other: OpenCV's matchTemplate) and
  correlated over their overlap; the best is the *aligned correlation*. It decides sparse
  fields, where alike nuclei give SIFT nothing to pair, by how many independent details agree
  (the *details*: pixels carrying the agreement over the area one detail spans).
- A microscope's fixed pattern (fixed_pattern.py), when one is known, is taken out of both
  thumbnails first, and keypoint pairs at one position inside it are dropped before RANSAC.
  What is left of it is discounted: the correlation counts only by how far it beats the best
  the query scores, at the same alignment, with other fields of the same microscope.
- The *placement*: where the query lies on the candidate (shares of each inside the other,
  offset, rotation, scale), from the transform, or from the shift when SIFT found too little.

Measured on DSB 2018 re-captures: without smoothing before detection, SIFT on stretched dark
fields locks onto JPEG 8x8 block edges, which "match" between unrelated captures; the blur in
local_features.extract removes that.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import threads
from .fixed_pattern import Pattern
from .local_features import HIGHPASS_PX, THUMB_SIZE, WORK_SIZE, LocalFeatures

RANSAC_PX = 3.0  # reprojection tolerance at the working size (local_features.WORK_SIZE)
# Most shortlisted candidates are other fields, whose few chance pairs keep RANSAC running to
# its limit: 1,000 tries cost a quarter of 4,000, and bench/accuracy.py's answers were the same.
RANSAC_ITERATIONS = 1000
SCALE_RANGE = (0.4, 2.5)  # a zoom of up to 2x either way, with room for focus breathing
NEAR_SCALE, NEAR_DEGREES = (0.8, 1.25), 10.0  # a transform near the identity (see verify_many)
TURN_SPREAD = 3  # cells of pairs below which only a transform near the identity lays thumbnails over
GRID = 8  # the spread's grid, cells a side
SAME_SPOT_PX = 2 * RANSAC_PX  # a pair this close at one position in the fixed pattern is the pattern's
# Central share of one thumbnail looked for in the other: shifts of up to (1 - TEMPLATE) / 2 of
# the field either way are found this way.
TEMPLATE = 0.7
MIN_OVERLAP = 0.3  # share of the smaller thumbnail that must overlap the other to be correlated
# Verified pairs in fewer cells than this do not place the query by themselves (chance pairs of
# unrelated fields reach 5, score.CHANCE_SPREAD); the alignment that correlates best does, from
# PLACE_CORRELATION.
PLACE_SPREAD = 6
PLACE_CORRELATION = 0.3
# A correlation above this is checked against the microscope's other fields at the same
# alignment (fixed_pattern: the cohort); below it nothing could come of it.
COHORT_FROM = 0.3
SAME_FIELD = 0.9  # correlation at which two enrolled captures are taken to show one field
MIN_PART = 8  # candidates a part holds at least; fewer are not worth a thread's hand-over


class Placement(NamedTuple):
    """Where the query lies on the candidate, in the candidate's pixels."""

    overlap_query: float  # share of the query's area inside the candidate's field
    overlap_candidate: float  # share of the candidate's field inside the query
    offset_px: tuple[float, float]  # the query's centre from the candidate's centre
    rotation_deg: float  # how far the query is turned clockwise, as seen on screen
    scale: float  # query pixels per candidate pixel

    def to_json(self) -> dict:
        return {"overlap_query": round(self.overlap_query, 3), "overlap_candidate": round(self.overlap_candidate, 3),
                "offset_px": [round(v, 1) for v in self.offset_px], "rotation_deg": round(self.rotation_deg, 1),
                "scale": round(self.scale, 3)}


class Verification(NamedTuple):
    inliers: int  # keypoint pairs that agree with the fitted similarity transform
    spread: int  # grid cells holding them (the larger count of the two captures)
    correlation: float  # of the two thumbnails at their best alignment, over the overlap
    details: float  # how many independent details that correlation rests on
    placement: Placement | None  # None when nothing laid the two over each other
    pairs: np.ndarray  # (inliers, 2, 2) query and candidate points, at the working size


def verify(query: LocalFeatures, candidate: LocalFeatures, pattern: Pattern | None = None) -> Verification:
    return verify_many(query, [candidate], pattern)[0]


def verify_many(query: LocalFeatures, candidates: list[LocalFeatures],
                pattern: Pattern | None = None) -> list[Verification]:
    """`verify` against each candidate. A shortlist is verified in parts on a shared pool of
    threads (threads.py). Within a part the descriptor comparisons are one matrix product
    (RootSIFT vectors have unit length, so the nearest neighbour by distance is the one with
    the largest dot product): several times faster than pair by pair."""
    threads.settle()
    query.root_sift, query.thumb32  # (cached once, before the threads read them)
    query_thumb = pattern.clean(query.thumb32) if pattern else query.thumb32
    query_centre = _centre(query_thumb)
    count = min(threads.VERIFY_THREADS, len(candidates) // MIN_PART)
    if count < 2:
        return _verify_part(query, query_thumb, query_centre, candidates, pattern)
    n = len(candidates)
    parts = [candidates[i * n // count:(i + 1) * n // count] for i in range(count)]
    done = threads.pool().map(lambda part: _verify_part(query, query_thumb, query_centre, part, pattern), parts)
    return [v for part in done for v in part]


def _verify_part(query: LocalFeatures, query_thumb: np.ndarray, query_centre, candidates: list[LocalFeatures],
                 pattern: Pattern | None) -> list[Verification]:
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
            qi, ci = mutual, best_candidate[mutual]
            if pattern is not None and query.thumbnail.shape == candidate.thumbnail.shape == pattern.shape:
                qi, ci = _off_pattern(query, candidate, qi, ci, pattern)
            if len(qi) >= 3:
                fit = _fit(query, candidate, qi, ci)
        transform, pairs = fit or (None, np.zeros((0, 2, 2), np.float32))
        spread = _spread(pairs, query, candidate)
        candidate_thumb = pattern.clean(candidate.thumb32) if pattern else candidate.thumb32
        # a transform of pairs bunched in a cell or two is as likely chance: trusted to lay the
        # thumbnails over each other only when it is near the identity (a re-capture at one
        # microscope); a turn or zoom must show in more pairs
        overlay = transform if spread >= TURN_SPREAD or _near_identity(transform) else None
        correlation, alignment = _best_overlay(query_thumb, query_centre, candidate_thumb, overlay)
        details = 0.0
        if correlation > 0:  # (no correlation, no details to count)
            # pixels that carry the agreement, over the area each detail spans
            details = _details_at(query_thumb, candidate_thumb, alignment, query.grain, candidate.grain)
        if correlation > COHORT_FROM and pattern is not None \
                and candidate_thumb.shape == pattern.shape == query_thumb.shape:
            # what lies at the same place in every capture of the microscope is no evidence
            shared = max(_shared_at(query_thumb, alignment, pattern, candidate, candidate_thumb), 0.0)
            correlation = (correlation - shared) / (1 - shared) if shared < 1 else 0.0
        placement = None  # (for chance alignments of unrelated fields it would mean nothing)
        if spread >= PLACE_SPREAD:
            placement = _placement(query, candidate, _in_pixels(transform, query, candidate, work=True))
        elif correlation >= PLACE_CORRELATION:
            placement = _placement(query, candidate, _in_pixels(alignment, query, candidate, work=False))
        results.append(Verification(len(pairs), spread, correlation, float(details), placement, pairs))
    return results


def _off_pattern(query, candidate, qi, ci, pattern: Pattern):
    """Pairs other than those at one position inside the fixed pattern (dust, a field stop's
    edge): unrelated fields of one microscope share those."""
    q, c = query.points[qi], candidate.points[ci]
    same_spot = np.flatnonzero(np.abs(q - c).max(axis=1) < SAME_SPOT_PX)
    if not len(same_spot):
        return qi, ci
    keep = np.ones(len(qi), bool)
    keep[same_spot[pattern.covers(q[same_spot], query.work_shape)]] = False
    return qi[keep], ci[keep]


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


def _near_identity(transform) -> bool:
    if transform is None:
        return False
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    return NEAR_SCALE[0] < scale < NEAR_SCALE[1] and abs(np.degrees(np.arctan2(transform[1, 0], transform[0, 0]))) < NEAR_DEGREES


def _in_pixels(matrix: np.ndarray, query: LocalFeatures, candidate: LocalFeatures, work: bool) -> np.ndarray:
    """A 2x3 transform between the captures' working images (work) or thumbnails, as one from
    query pixels to candidate pixels."""
    (qh, qw), (ch, cw) = ((query.work_shape, candidate.work_shape) if work
                          else (query.thumbnail.shape, candidate.thumbnail.shape))
    into = np.array([qw / query.size[0], qh / query.size[1]])  # query pixels -> its frame
    out = np.array([candidate.size[0] / cw, candidate.size[1] / ch])  # candidate frame -> pixels
    m = matrix.astype(np.float64)
    return np.hstack([out[:, None] * m[:, :2] * into[None, :], (out * m[:, 2])[:, None]])


def _placement(query: LocalFeatures, candidate: LocalFeatures, m: np.ndarray) -> Placement | None:
    """Where the query's rectangle lands on the candidate's under m (query -> candidate pixels)."""
    import cv2

    det = abs(float(np.linalg.det(m[:, :2])))
    if det < 1e-9:
        return None
    (wq, hq), (wc, hc) = query.size, candidate.size
    corners = np.array([[0, 0], [wq, 0], [wq, hq], [0, hq]], np.float64) @ m[:, :2].T + m[:, 2]
    field = np.array([[0, 0], [wc, 0], [wc, hc], [0, hc]], np.float32)
    shared, _ = cv2.intersectConvexConvex(corners.astype(np.float32), field)
    centre = m @ np.array([wq / 2, hq / 2, 1.0])
    return Placement(overlap_query=min(1.0, shared / (det * wq * hq)), overlap_candidate=min(1.0, shared / (wc * hc)),
                     offset_px=(float(centre[0] - wc / 2), float(centre[1] - hc / 2)),
                     rotation_deg=float(-np.degrees(np.arctan2(m[1, 0], m[0, 0]))), scale=float(1 / np.sqrt(det)))


def _spread(pairs: np.ndarray, query: LocalFeatures, candidate: LocalFeatures) -> int:
    """Cells of a GRID x GRID grid holding verified pairs, over the query and over the
    candidate; the larger count (a zoomed-in query covers only part of the candidate)."""
    if not len(pairs):
        return 0
    counts = []
    for points, (h, w) in ((pairs[:, 0], query.work_shape), (pairs[:, 1], candidate.work_shape)):
        cells = np.clip((points * (GRID / w, GRID / h)).astype(int), 0, GRID - 1)
        occupied = np.zeros(GRID * GRID, bool)
        occupied[cells[:, 0] * GRID + cells[:, 1]] = True
        counts.append(int(occupied.sum()))
    return max(counts)


def _centre(thumbnail: np.ndarray) -> tuple[np.ndarray, int, int] | None:
    """The central TEMPLATE share of a thumbnail and its offset, looked for in the other's;
    None when too small or flat (nothing to look for)."""
    h, w = thumbnail.shape
    th, tw = int(h * TEMPLATE), int(w * TEMPLATE)
    y0, x0 = (h - th) // 2, (w - tw) // 2
    template = thumbnail[y0:y0 + th, x0:x0 + tw]
    return (template, x0, y0) if min(th, tw) >= 8 and float(template.std()) > 1e-3 else None


def _best_overlay(a: np.ndarray, a_centre, b: np.ndarray, transform):
    """The aligned correlation of thumbnails a (query) and b (candidate): the best of their
    correlations under the SIFT transform (if any) and under the shift that lays each one's
    centre on the other; with that alignment as a 2x3 matrix in thumbnail pixels (None when
    none was found)."""
    alignments = []
    if transform is not None:
        small = transform.astype(np.float32)
        small[:, 2] *= THUMB_SIZE / WORK_SIZE  # same rotation and zoom, translation at thumbnail scale
        alignments.append(small)
    for shift in (_locate(a_centre, b), _negated(_locate(_centre(b), a))):
        if shift is not None:
            alignments.append(_Shift([[1, 0, shift[0]], [0, 1, shift[1]]], np.float32))
    found = [(_pearson(*_overlap(a, b, m)), m) for m in alignments]
    return max(found, key=lambda t: t[0], default=(0.0, None))


def _shared_at(a: np.ndarray, alignment: np.ndarray, pattern: Pattern, candidate: LocalFeatures,
               candidate_thumb: np.ndarray) -> float:
    """The best the query correlates, at this alignment, with other fields of its microscope
    (the pattern's cohort): what another field scores there, the candidate must beat. The
    candidate is left out, and so is a member that shows the candidate's own field (enrolled
    twice, or under another name): that is no other field."""
    scores = sorted(((_pearson(*_overlap(a, cleaned, alignment)), i) for i, (source, cleaned)
                     in enumerate(pattern.cohort) if source is not candidate), reverse=True)
    for score, i in scores:
        cleaned = pattern.cohort[i][1]
        if _best_overlay(cleaned, _centre(cleaned), candidate_thumb, None)[0] < SAME_FIELD:
            return score
    return 0.0


def _overlap(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of thumbnail a laid onto b by m (2x3, thumbnail pixels) and those of b under
    them, where they overlap (empty when that is less than MIN_OVERLAP of b); a whole-pixel
    shift needs no warp (two slices cost a fifth of two warps)."""
    import cv2

    h, w = b.shape
    if isinstance(m, _Shift):
        dx, dy = int(m[0, 2]), int(m[1, 2])
        x0, y0 = max(0, dx), max(0, dy)
        x1, y1 = min(w, a.shape[1] + dx), min(h, a.shape[0] + dy)
        if (x1 - x0) * (y1 - y0) < MIN_OVERLAP * min(h * w, a.size):  # of the smaller
            return _EMPTY, _EMPTY
        return a[y0 - dy:y1 - dy, x0 - dx:x1 - dx].ravel(), b[y0:y1, x0:x1].ravel()
    zoom = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if zoom > 1.25:  # compare at the coarser of the two: lay b onto a instead
        return _overlap(b, a, cv2.invertAffineTransform(m))[::-1]
    if zoom < 0.8:
        # a is shrunk onto b: first blurred as a camera that far away would see it, and b
        # high-passed as a was, at b's scale (a's thumbnail lost less of the fine, more of the
        # coarse: the same HIGHPASS_PX in pixels a zoom apart)
        a = cv2.GaussianBlur(a, (0, 0), 0.5 * np.sqrt(1 / zoom ** 2 - 1))
        b = b - cv2.GaussianBlur(b, (0, 0), HIGHPASS_PX * zoom)
    # outside a, NaN; pixels that sample it are NaN too: those where a does not reach
    warped = cv2.warpAffine(a, m, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)
    inside = ~np.isnan(warped)
    if np.count_nonzero(inside) < MIN_OVERLAP * min(h * w, zoom * zoom * a.size):  # of the smaller
        return _EMPTY, _EMPTY
    return warped[inside], b[inside]


_EMPTY = np.zeros(0, np.float32)


class _Shift(np.ndarray):
    """An alignment that only shifts by whole pixels (laid over by slicing, not warping)."""

    def __new__(cls, rows, dtype):
        return np.asarray(rows, dtype).view(cls)


def _negated(shift):
    return None if shift is None else (-shift[0], -shift[1])


def _locate(centre, other: np.ndarray) -> tuple[int, int] | None:
    """The shift (dx, dy) that lays a thumbnail's centre best onto another thumbnail
    (normalised cross-correlation)."""
    import cv2

    if centre is None:
        return None
    template, x0, y0 = centre
    if template.shape[0] > other.shape[0] or template.shape[1] > other.shape[1]:
        return None
    _, _, _, (x, y) = cv2.minMaxLoc(cv2.matchTemplate(other, template, cv2.TM_CCOEFF_NORMED))
    return x - x0, y - y0


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if not len(a):
        return 0.0
    a = a - a.sum() / len(a)
    b = b - b.sum() / len(b)
    return float(np.dot(a, b) / (np.sqrt(np.dot(a, a) * np.dot(b, b)) + 1e-6))


def _details_at(a: np.ndarray, b: np.ndarray, m: np.ndarray, grain_a: float, grain_b: float) -> float:
    """How many independent details carry the agreement of a laid onto b by m: the pixels
    that carry it, (sum ab)^2 / sum (ab)^2, over the area one detail spans, pi times the
    geometric mean of the two grains (each brought to the frame they are compared in). One
    bright speck laid over another correlates as well as a whole field of nuclei, as one
    detail; noise that does not agree adds nothing."""
    a_part, b_part = _overlap(a, b, m)
    if not len(a_part):
        return 0.0
    product = (a_part - a_part.mean()) * (b_part - b_part.mean())
    agreement = float(product.sum())
    if agreement <= 0:
        return 0.0
    zoom = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))  # _overlap compares in the coarser frame
    grain_a, grain_b = (grain_a, grain_b / zoom ** 2) if zoom > 1.25 else (
        (grain_a * zoom ** 2, grain_b) if zoom < 0.8 else (grain_a, grain_b))
    pixels = agreement * agreement / max(float(np.dot(product, product)), 1e-12)
    return pixels / (np.pi * np.sqrt(grain_a * grain_b))

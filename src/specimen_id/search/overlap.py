"""Overlaps found at enrolment: a new capture that shares part of its view with another
specimen's enrolled field (a neighbouring tile of the same slide, a re-enrolled field under a
new name) is worth knowing about, though it is not a reason to refuse it."""

from __future__ import annotations

import numpy as np

from .. import local_features
from ..local_features import LocalFeatures
from ..verification import verify_many
from .query import shortlist_pattern
from .score import DEFAULT_THRESHOLD, SCORE_KIND, fused

NEAREST = 8  # other specimens' captures verified for each new capture (by CNN cosine)
NOTABLE = 0.1  # share of either field inside the other from which an overlap is reported


def find_overlaps(db, new: list[tuple[int, str, np.ndarray, bytes]]) -> list[dict]:
    """For new captures (id, specimen, vector, local features), the enrolled captures of other
    specimens they verifiably overlap by more than NOTABLE of either field: dicts with both
    capture ids, the other's specimen and uuid, and the share of each field inside the other."""
    if not new:
        return []
    threshold = db.threshold(SCORE_KIND, DEFAULT_THRESHOLD)
    hits = db.vectors.search(np.stack([vector for _, _, vector, _ in new]), 4 * NEAREST)
    wanted = {hit.capture_id for row in hits for hit in row}
    owners = db.capture_owners(wanted)
    stored = {cid: LocalFeatures.from_bytes(blob)
              for cid, blob in db.local_features(wanted, local_features.FEATURE_VERSION).items()}
    found = []
    for (cid, specimen, _, blob), row in zip(new, hits):
        nearest = [(hit.similarity, hit.capture_id) for hit in row
                   if hit.capture_id in stored and hit.capture_id in owners
                   and owners[hit.capture_id]["specimen"] != specimen]
        nearest = nearest[:NEAREST]
        if not nearest:
            continue
        features = LocalFeatures.from_bytes(blob)
        others = [stored[i] for _, i in nearest]
        pattern = shortlist_pattern(features, [(stored[i], owners[i]["specimen"]) for _, i in nearest])
        for (similarity, other), check in zip(nearest, verify_many(features, others, pattern)):
            place = check.placement
            if place is None or max(place.overlap_query, place.overlap_candidate) <= NOTABLE:
                continue
            if fused(similarity, check.spread, check.correlation, check.details) >= threshold:
                found.append({"capture_id": cid, "other_id": other, "specimen": owners[other]["specimen"],
                              "other_capture": owners[other]["uuid"],
                              "share_of_capture": place.overlap_query, "share_of_other": place.overlap_candidate})
    return found

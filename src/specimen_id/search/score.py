"""One calibrated score from two kinds of evidence, and the decision it leads to.

The fused score is a logistic model of P(same field | evidence), fitted on genuine and impostor
pairs of the tuning half of bench/accuracy.py. The evidence: CNN cosine, RANSAC inliers, how
many keypoints the sparser capture has (5 agreeing keypoints out of 6 say more than 5 out of
800: chance alignments grow with density), and the correlation of the two captures aligned by
the fitted transform (which rescues sparse fields with few keypoints). Its coefficients and the
local-feature recipe make up SCORE_KIND: a threshold stored for another kind is never applied
to this one.
"""

from __future__ import annotations

import hashlib
import json
import math

from ..local_features import FEATURE_VERSION

# Fitted by `python bench/accuracy.py` (tuning half of the fields; the default model, int8);
# see bench/RESULTS.md. Other models keep these weights; `calibrate` fits their threshold.
FUSION = {"bias": -24.46, "cnn_similarity": 14.28, "log_inliers": 0.31, "inlier_fraction": 4.84,
          "log_keypoints": 0.54, "aligned_correlation": 10.29}
# Named after the weights themselves, so any refit is a new kind of score.
SCORE_KIND = "fused-{}+{}".format(
    hashlib.sha256(json.dumps(FUSION, sort_keys=True).encode()).hexdigest()[:8], FEATURE_VERSION)
# Default threshold on the fused probability, chosen on the tuning half for a false-match rate
# of at most 0.1% per comparison (bench/RESULTS.md); `specimen-id calibrate` fits a database's own.
DEFAULT_THRESHOLD = 0.5


def evidence_terms(cnn_similarity: float, inliers: int, keypoints: int, correlation: float) -> dict:
    """The model's inputs, named as FUSION's weights (keypoints: of the sparser capture)."""
    return {"bias": 1.0, "cnn_similarity": cnn_similarity, "log_inliers": math.log1p(inliers),
            "inlier_fraction": inliers / max(keypoints, 1), "log_keypoints": math.log1p(keypoints),
            "aligned_correlation": correlation}


def fused(cnn_similarity: float, inliers: int, keypoints: int, correlation: float,
          fusion: dict = FUSION) -> float:
    terms = evidence_terms(cnn_similarity, inliers, keypoints, correlation)
    z = sum(fusion[name] * value for name, value in terms.items())
    return 1 / (1 + math.exp(-z)) if z > -700 else 0.0


def decide(candidates: list[dict], threshold: float, margin: float) -> tuple[str, str | None, float]:
    """`match` when the best specimen clears the threshold and leads the next by at least the
    margin; `ambiguous` when it clears it but the next is too close to call; else `no_match`."""
    if not candidates or candidates[0]["score"] < threshold:
        return "no_match", None, candidates[0]["score"] if candidates else 0.0
    best = candidates[0]
    if len(candidates) > 1 and best["score"] - candidates[1]["score"] < margin:
        return "ambiguous", None, best["score"]
    return "match", best["specimen"], best["score"]

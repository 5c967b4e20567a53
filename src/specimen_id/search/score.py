"""One calibrated score from two kinds of evidence, and the decision it leads to.

The fused score is a logistic model of P(same field | evidence), fitted on genuine and impostor
pairs of the tuning half of bench/accuracy.py. The evidence: CNN cosine, RANSAC inliers, and
the aligned correlation (local_features: the two captures laid over each other at their best
alignment). The correlation carries most of the weight, and more above CORRELATION_KNEE:
unrelated fields reach 0.5 to 0.7 by chance alignment of a few alike nuclei, the same field
0.8 and more. Every weight is positive, so more evidence never lowers the score. Its
coefficients and the local-feature recipe make up SCORE_KIND: a threshold stored for another
kind is never applied to this one.
"""

from __future__ import annotations

import hashlib
import json
import math

from ..local_features import FEATURE_VERSION

# Fitted by `python bench/accuracy.py` (tuning half of the fields; the default model, int8);
# see bench/RESULTS.md. Other models keep these weights; `calibrate` fits their threshold.
FUSION = {"bias": -17.17, "cnn_similarity": 8.68, "log_inliers": 0.26, "aligned_correlation": 3.72,
          "correlation_above_knee": 24.72}
CORRELATION_KNEE = 0.6
# Named after the weights themselves, so any refit is a new kind of score.
SCORE_KIND = "fused-{}+{}".format(
    hashlib.sha256(json.dumps(FUSION, sort_keys=True).encode()).hexdigest()[:8], FEATURE_VERSION)
# Default threshold on the fused probability, chosen on the tuning half for a false-match rate
# of at most 0.1% per comparison (bench/RESULTS.md); `specimen-id calibrate` fits a database's own.
DEFAULT_THRESHOLD = 0.5


def evidence_terms(cnn_similarity: float, inliers: int, correlation: float) -> dict:
    """The model's inputs, named as FUSION's weights."""
    correlation = min(max(correlation, 0.0), 1.0)  # an anti-correlation is no evidence either way
    return {"bias": 1.0, "cnn_similarity": cnn_similarity, "log_inliers": math.log1p(inliers),
            "aligned_correlation": correlation,
            "correlation_above_knee": max(correlation - CORRELATION_KNEE, 0.0)}


def fused(cnn_similarity: float, inliers: int, correlation: float, fusion: dict = FUSION) -> float:
    terms = evidence_terms(cnn_similarity, inliers, correlation)
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

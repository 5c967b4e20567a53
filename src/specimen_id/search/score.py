"""One calibrated score from the evidence of verification, and the decision it leads to.

The fused score is a logistic model of P(same field | evidence), fitted by bench/accuracy.py on
genuine and impostor pairs of real re-captures (../shared/data/real) and of the simulated
tuning halves (DSB 2018, and the same fields seen through one simulated microscope) together: a score fitted to simulated re-captures alone learns the
simulator (there a true pair always correlates about 0.99, so correlation was almost all it
used, and real pairs that changed focus were called no_match). The evidence:
- the CNN cosine;
- the spread of verified keypoint pairs beyond CHANCE_SPREAD, the cells that unrelated fields
  reach by chance (verification.py): many pairs all over the overlap are decisive whatever
  else says, a few bunched ones are not;
- the aligned correlation above CORRELATION_KNEE (unrelated sparse fields reach 0.5 to 0.7 by
  chance alignment of a few alike nuclei), and the correlation weighed by the decades of
  independent details it rests on (one glare disc laid over another agrees on hundreds of
  pixels, but as one detail).
Every weight is positive, so more evidence never lowers the score. Its coefficients and the
local-feature recipe make up SCORE_KIND: a threshold stored for another kind is never applied
to this one.

A score says "these two captures show one scene"; the placement says whether the query shows
*the candidate's field*: at least SHOWS of the query inside the field, or of the field inside
the query. A verified candidate that shares less (a neighbouring tile of the same slide) is
reported as an overlap, never as a rival that would make the answer ambiguous.
"""

from __future__ import annotations

import hashlib
import json
import math

from ..local_features import FEATURE_VERSION

# Fitted by `python bench/accuracy.py` (real sets and the DSB tuning half; the default model,
# int8); see bench/RESULTS.md. Other models keep these weights; `calibrate` fits their threshold.
FUSION = {"bias": -26.73, "cnn_similarity": 23.84, "log_spread_above_chance": 9.94,
          "correlation_above_knee": 41.67, "correlation_x_details": 1.83}
CORRELATION_KNEE = 0.6
CHANCE_SPREAD = 5  # cells that verified pairs of unrelated fields reach by chance
# Named after the weights themselves, so any refit is a new kind of score.
SCORE_KIND = "fused-{}+{}".format(
    hashlib.sha256(json.dumps(FUSION, sort_keys=True).encode()).hexdigest()[:8], FEATURE_VERSION)
# Default threshold on the fused score, P(same field) for one pair. Not even odds: a query
# weighs a whole shortlist, so its best impostor is the best of many tries, and a false match
# names the wrong specimen where a no_match only sends a person to look: a match must be 9 to 1.
# bench/RESULTS.md shows what other thresholds cost; `specimen-id calibrate` fits a database's own.
DEFAULT_THRESHOLD = 0.9
# No evidence makes two captures certainly one field: the score stays under 1, so that a
# threshold of 1 refuses every match.
MAX_LOGIT = 20.0
SHOWS = 0.5  # share of the query in the field, or of the field in the query, that makes it that field


def evidence_terms(cnn_similarity: float, spread: int, correlation: float, details: float) -> dict:
    """The model's inputs, named as FUSION's weights."""
    correlation = min(max(correlation, 0.0), 1.0)  # an anti-correlation is no evidence either way
    return {"bias": 1.0, "cnn_similarity": cnn_similarity,
            "log_spread_above_chance": math.log1p(max(spread - CHANCE_SPREAD, 0)),
            "correlation_above_knee": max(correlation - CORRELATION_KNEE, 0.0),
            "correlation_x_details": correlation * math.log10(max(details, 1.0))}


def fused(cnn_similarity: float, spread: int, correlation: float, details: float,
          fusion: dict | None = None) -> float:
    """P(same field) from the evidence, with FUSION's weights (or these)."""
    terms = evidence_terms(cnn_similarity, spread, correlation, details)
    z = min(sum((fusion or FUSION)[name] * value for name, value in terms.items()), MAX_LOGIT)
    return 1 / (1 + math.exp(-z)) if z > -700 else 0.0


def shows_field(candidate: dict) -> bool:
    """Whether the query shows this candidate's field (see SHOWS); a candidate that could not
    be placed is judged by its score alone."""
    placement = candidate.get("placement")
    return placement is None or max(placement["overlap_query"], placement["overlap_candidate"]) >= SHOWS


def decide(candidates: list[dict], threshold: float, margin: float) -> dict:
    """The decision over ranked candidates (best score first): `match` when the best field the
    query shows clears the threshold and leads the next such field by at least the margin;
    `ambiguous` when it clears it but the next is too close to call (both are then named as
    contenders, with the lead); else `no_match`. Candidates that clear the threshold but share
    too little of the query's view are overlaps (neighbouring fields), whatever the decision."""
    fields = [c for c in candidates if shows_field(c)]
    overlaps = [{"specimen": c["specimen"], "capture": c["capture"],
                 "overlap_query": c["placement"]["overlap_query"],
                 "overlap_candidate": c["placement"]["overlap_candidate"]}
                for c in candidates if not shows_field(c) and c["score"] >= threshold]
    out = {"decision": "no_match", "specimen": None, "score": fields[0]["score"] if fields else 0.0,
           "overlaps": overlaps}
    if not fields or fields[0]["score"] < threshold:
        return out
    best, runner_up = fields[0], fields[1] if len(fields) > 1 else None
    lead = best["score"] - (runner_up["score"] if runner_up else 0.0)
    if runner_up is not None and lead < margin:
        out.update(decision="ambiguous", lead=lead,
                   contenders=[{"specimen": c["specimen"], "score": c["score"]} for c in (best, runner_up)])
        return out
    out.update(decision="match", specimen=best["specimen"], lead=lead)
    return out


def threshold_facts(db) -> dict:
    """The kind of score and the threshold that applies to it in this database (as `info`
    and an archive's manifest give them)."""
    return {"score_kind": SCORE_KIND, "threshold": db.threshold(SCORE_KIND, DEFAULT_THRESHOLD)}

"""The fused score refitted and replayed from stored candidates (bench/accuracy.py): the
logistic fit of its weights on verified pairs, and each query decided again as the product
decides, at a given fusion and threshold, with its tallies."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from specimen_id.config import DEFAULTS
from specimen_id.search import score as scoring

TERMS = list(scoring.FUSION)


def rescored(row, fusion) -> list[dict]:
    """The row's candidates scored with these fusion weights, best first."""
    out = [{**c, "score": scoring.fused(c["cnn_similarity"], c["spread"], c["correlation"], c["details"], fusion)}
           for c in row["candidates"]]
    return sorted(out, key=lambda c: -c["score"])


def terms(candidate) -> list[float]:
    t = scoring.evidence_terms(candidate["cnn_similarity"], candidate["spread"], candidate["correlation"],
                               candidate["details"])
    return [t[name] for name in TERMS]


def fit_fusion(rows) -> dict:
    """Logistic regression on every verified (query, candidate) pair of these rows: genuine
    when it is the query's field, impostor when it shares nothing with it (pairs that share
    part of the view are for the placement rule). Each set weighs the same."""
    x, y, w = [], [], []
    per_set = Counter(r["set"] for r in rows)
    pairs = defaultdict(int)
    for r in rows:
        for c in r["candidates"]:
            if c["specimen"] == r["truth"] or c["specimen"] not in r["overlaps"]:
                pairs[r["set"]] += 1
    for r in rows:
        for c in r["candidates"]:
            genuine = c["specimen"] == r["truth"]
            if genuine or c["specimen"] not in r["overlaps"]:
                x.append(terms(c))
                y.append(float(genuine))
                w.append(1.0 / pairs[r["set"]])
    x, y, w = np.array(x), np.array(y), np.array(w) * len(x) / len(per_set)
    # every weight but the bias kept positive (more evidence never lowers the score): a term
    # fitted negative is dropped and the rest fitted again
    active = list(range(len(TERMS)))
    while True:
        fitted = fit_logistic(x[:, active], y, w)
        negative = [a for a, v in zip(active, fitted) if v < 0 and TERMS[a] != "bias"]
        if not negative:
            break
        active = [a for a in active if a not in negative]
    weights = dict.fromkeys(TERMS, 0.0) | {TERMS[a]: round(float(v), 2) for a, v in zip(active, fitted)}
    return weights


def fit_logistic(x, y, weight, l2: float = 1e-2, steps: int = 60) -> np.ndarray:
    """Weighted logistic regression by Newton's method (IRLS); x has a leading column of ones."""
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(x @ w, -700, 700)))
        gradient = x.T @ (weight * (p - y)) + l2 * w
        hessian = (x * (weight * p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        w -= np.linalg.solve(hessian, gradient)
    return w


def decisions(rows, fusion, threshold: float = scoring.DEFAULT_THRESHOLD) -> list[dict]:
    """Each row decided as the product decides: (row, decision, answer, top-1, best two)."""
    out = []
    for r in rows:
        ranked = rescored(r, fusion)
        decided = scoring.decide(ranked, threshold, DEFAULTS["margin"])
        fields = [c for c in ranked if scoring.shows_field(c)] or ranked
        out.append({"row": r, "decided": decided, "first": fields[0]["specimen"] if fields else None,
                    # calibration: the best two candidates that are the field or share nothing with it
                    "top2": [(c["specimen"] == r["truth"], c["score"]) for c in ranked
                             if c["specimen"] == r["truth"] or c["specimen"] not in r["overlaps"]][:2],
                    "genuine": next((c["score"] for c in fields[:1] if c["specimen"] == r["truth"]), 0.0),
                    "impostor": max((c["score"] for c in ranked if c["specimen"] != r["truth"]
                                     and c["specimen"] not in r["overlaps"]), default=0.0)})
    return out


def tally(decided: list[dict]) -> dict:
    n = len(decided)
    enrolled = [d for d in decided if d["row"]["truth"]]
    right = sum((d["decided"]["decision"] == "match" and d["decided"]["specimen"] == d["row"]["truth"])
                or (d["decided"]["decision"] == "no_match" and not d["row"]["truth"]) for d in decided)
    false = sum(d["decided"]["decision"] == "match" and d["decided"]["specimen"] != d["row"]["truth"] for d in decided)
    ambiguous = sum(d["decided"]["decision"] == "ambiguous" for d in decided)
    top1 = sum(d["first"] == d["row"]["truth"] for d in enrolled)
    return {"n": n, "right": right, "false": false, "ambiguous": ambiguous, "enrolled": len(enrolled), "top1": top1}

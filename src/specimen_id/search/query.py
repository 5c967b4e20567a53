"""Answering "which specimen is this?" for new captures.

FAISS ranks captures; candidates are specimens, each represented by its best capture, so a
specimen enrolled from ten captures does not crowd the list. The decision is `match` when the
best specimen's score reaches the threshold, else `no_match`."""

from __future__ import annotations

from .. import __version__, images
from ..errors import ImageRefused
from ..models import embedder_for

SCORE_KIND = "cosine"


def rank(db, vector, top_k: int) -> list[dict]:
    """The top_k specimens nearest to one embedding, best first."""
    k = max(4 * top_k, 32)
    while True:
        scores, ids = db.search(vector[None], k)
        owners = db.capture_owners(ids[0])
        best: dict[str, dict] = {}
        for score, cid in zip(scores[0], ids[0]):
            owner = owners.get(int(cid))
            if owner and owner["specimen"] not in best:
                best[owner["specimen"]] = {"specimen": owner["specimen"], "score": float(score),
                                           "capture": owner["uuid"]}
        # Many captures of few specimens can hide the k-th specimen: look further if so.
        if len(best) >= top_k or len(ids[0]) < k:
            return list(best.values())[:top_k]
        k *= 4


def decide(candidates: list[dict], threshold: float) -> tuple[str, str | None, float]:
    if candidates and candidates[0]["score"] >= threshold:
        return "match", candidates[0]["specimen"], candidates[0]["score"]
    return "no_match", None, candidates[0]["score"] if candidates else 0.0


def query(db, paths, top_k: int | None = None, threshold: float | None = None, *, model=None,
          weights=None, embedder=None, log: bool = True):
    """Yield one result dict per file, in order; a refused file yields a `refused` result and
    the rest go on. Every answered query is logged with what it takes to explain it later."""
    embedder = embedder or embedder_for(db, model, weights)
    threshold = db.threshold if threshold is None else float(threshold)
    top_k = int(top_k or db.setting("top_k"))
    for path in paths:
        try:
            capture = images.load(path)
        except ImageRefused as e:
            yield {"query": str(path), "decision": "refused", "error": str(e)}
            continue
        candidates = rank(db, embedder.embed([capture.pixels])[0], top_k)
        decision, specimen, score = decide(candidates, threshold)
        result = {"query": str(path), "decision": decision, "specimen": specimen,
                  "score": score, "threshold": threshold, "candidates": candidates}
        if log:
            result["query_id"] = db.log_query(result, capture, embedder.model_id, threshold,
                                              top_k, __version__, SCORE_KIND)
        yield result

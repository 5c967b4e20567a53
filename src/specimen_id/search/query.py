"""Answering "which specimen is this?" for new captures.

FAISS gives a shortlist of captures by CNN similarity; each is verified spatially against the
query (verification) and scored by the fused model (score). Candidates are specimens, each
represented by its best capture among those the query shows, so a specimen enrolled from ten
captures does not crowd the list. Exact copies (same file, same pixels) are reported on their
own."""

from __future__ import annotations

import numpy as np

from .. import __version__, fixed_pattern, local_features, quality
from ..config import setting
from ..local_features import LocalFeatures
from ..models import embedder_for
from ..models.views import views
from ..verification import verify_many
from .score import DEFAULT_THRESHOLD, SCORE_KIND, decide, fused, shows_field

# Captures each turned or zoomed view of a query adds to the shortlist (models/views.py)
VIEW_SHORTLIST = 8


def rank(db, vector, features: LocalFeatures, top_k: int, shortlist: int,
         exclude: set[int] = frozenset(), views=None, threshold: float = DEFAULT_THRESHOLD,
         searched=None) -> list[dict]:
    """The specimens in the shortlist (at least top_k of them, where there are), best fused
    score first, with their evidence (captures in `exclude` left out: calibration queries a
    capture against the others). Each specimen is represented by its best capture among those
    the query shows (score.SHOWS), else by its best capture. `views` (a function giving the query's turned and zoomed vectors,
    models/views.py) widens the shortlist when none of it is a field the query shows at the
    threshold. `searched`: the vector's hits for max(shortlist, top_k), when made already (a
    batch's vectors are searched at once)."""
    k = max(shortlist, top_k)
    scored: dict[int, dict] = {}  # capture id -> candidate, kept when the search widens
    pattern = []  # the microscope's, from the first shortlist (nearest first)
    while True:
        if searched is None:
            searched = db.vectors.search(vector[None], k)[0]
        found = [(hit.similarity, hit.capture_id) for hit in searched]
        searched = None  # a widened search is made again
        _verify(db, features, found, exclude, scored, pattern)
        if views is not None and not any(c["score"] >= threshold and shows_field(c) for c in scored.values()):
            turned = views()
            hits = db.vectors.search(turned, VIEW_SHORTLIST)
            # the views only admit captures; each is scored with the query's own cosine, as
            # the fusion was fitted (a view's is the best of a dozen tries, higher by chance)
            admitted = list(dict.fromkeys(hit.capture_id for row in hits for hit in row
                                          if hit.capture_id not in scored))
            stored = db.vectors.vectors_of(admitted)
            _verify(db, features, [(float(stored[i] @ vector), i) for i in admitted if i in stored],
                    exclude, scored, pattern)
            views = None  # once
        ordered = sorted(scored.values(), key=lambda c: (-shows_field(c), -c["score"], -c["cnn_similarity"]))
        best: dict[str, dict] = {}
        for candidate in ordered:
            best.setdefault(candidate["specimen"], candidate)
        # Many captures of few specimens can hide the k-th specimen: look further if so.
        if len(best) >= top_k or len(found) < k:
            return sorted(best.values(), key=lambda c: (-c["score"], -c["cnn_similarity"]))
        k *= 4


def _verify(db, features: LocalFeatures, found: list[tuple[float, int]], exclude, scored: dict, pattern: list):
    """Verify the captures found (cosine, capture id) not seen yet, into `scored`."""
    fresh = [(s, cid) for s, cid in found if cid not in exclude and cid not in scored]
    owners = db.capture_owners([cid for _, cid in fresh])
    todo = [(s, cid) for s, cid in fresh if cid in owners]
    stored = db.local_features([cid for _, cid in todo], local_features.FEATURE_VERSION)
    others = {cid: LocalFeatures.from_bytes(stored[cid]) for _, cid in todo if cid in stored}
    if not pattern:
        pattern.append(shortlist_pattern(features, [(others[cid], owners[cid]["specimen"]) for _, cid in todo
                                                    if cid in others]))
    checks = dict(zip(others, verify_many(features, list(others.values()), pattern[0])))
    for similarity, cid in todo:
        check = checks.get(cid)
        spread, correlation, details = (check.spread, check.correlation, check.details) if check else (0, 0.0, 0.0)
        scored[cid] = {"specimen": owners[cid]["specimen"],
                       "score": fused(similarity, spread, correlation, details),
                       "capture": owners[cid]["uuid"], "cnn_similarity": similarity,
                       "inliers": check.inliers if check else 0, "spread": spread,
                       "keypoints": min(len(features), len(others[cid])) if cid in others else 0,
                       "correlation": correlation, "details": details,
                       "placement": check.placement.to_json() if check and check.placement else None}


def shortlist_pattern(query: LocalFeatures, shortlist: list[tuple[LocalFeatures, str]]):
    """The fixed pattern of the query's microscope (fixed_pattern.py) from the shortlist:
    the nearest capture of each specimen with the query's shape."""
    nearest: dict[str, LocalFeatures] = {}
    for features, specimen in shortlist:
        if features.thumbnail.shape == query.thumbnail.shape:
            nearest.setdefault(specimen, features)
    return fixed_pattern.estimate(list(nearest.values()))


def exact_copies(db, capture) -> list[dict]:
    """Enrolled captures that are this very file, or these very pixels."""
    return [{"specimen": row["specimen"], "capture": row["uuid"],
             "same": "file" if row["file_sha256"] == capture.file_sha256 else "pixels"}
            for row in db.find_captures(capture.file_sha256, capture.pixel_sha256)]


# Files answered together: their CNN inputs go through the network in one call and their
# vectors through one search, and their log rows commit at once. The first answer waits for
# the batch, which a person at the microscope (one file) never sees.
BATCH = 8


def query(db, paths, top_k: int | None = None, threshold: float | None = None, *, model=None,
          weights=None, embedder=None, log: bool = True):
    """Yield one result dict per file, in order; a refused file yields a `refused` result and
    the rest go on. Every answered query is logged with what it takes to explain it later.
    A pipeline (indexer/pipeline.py): worker threads read, decode, measure and extract the
    local features and CNN input of the files ahead while this thread answers a BATCH; each
    is verified on all cores (verification.verify_many). The answers are those of answering
    each file on its own. `paths` is read a few batches ahead; a batch is logged before its
    first answer is given."""
    from ..indexer.pipeline import load_measured
    from ..indexer.pipeline import prepare as pipeline

    embedder = embedder or embedder_for(db, model, weights)
    failed = []

    def listed():  # paths that fail while listed: the files before are answered first
        try:
            yield from paths
        except Exception as e:
            failed.append(e)

    pending = []
    for prepared in pipeline(listed(), load_measured, embedder):
        pending.append(prepared)
        if len(pending) == BATCH:
            yield from _answer_batch(db, pending, embedder, top_k, threshold, log)
            pending = []
    yield from _answer_batch(db, pending, embedder, top_k, threshold, log)
    if failed:
        raise failed[0]


def _answer_batch(db, batch: list, embedder, top_k, threshold, log: bool) -> list[dict]:
    """The results of a batch of prepared files (indexer.pipeline.Prepared), logged at once."""
    ready = [p for p in batch if p.error is None]
    answered = {}
    top_k = int(top_k or setting(db, "top_k"))
    if ready:
        vectors = embedder.embed_inputs(np.stack([p.cnn_input for p in ready]))
        k = max(int(setting(db, "shortlist")), top_k)
        hits = db.vectors.search(vectors, k)
        for p, vector, found in zip(ready, vectors, hits):
            answered[id(p)] = answer(db, p.capture, embedder, top_k, threshold, log=False,
                                     prepared=(p.features, vector), hits=found)
    if log and answered:
        results = [answered[id(p)] for p in ready]
        ids = db.log_queries([(r, p.capture) for r, p in zip(results, ready)], embedder.model_id,
                             top_k, __version__, SCORE_KIND)
        for result, query_id in zip(results, ids):
            result["query_id"] = query_id
    return [answered[id(p)] if p.error is None else
            {"query": str(p.item), "decision": "refused", "error": str(p.error)} for p in batch]


def prepare(capture, embedder) -> tuple:
    """What answering a capture starts from: (its local features, its vector); its quality
    measures are taken too (kept with the capture)."""
    capture.quality  # noqa: B018  (measured here, ahead, once)
    return local_features.extract(capture.pixels), embedder.embed([capture.pixels])[0]


def answer(db, capture, embedder, top_k: int | None = None, threshold: float | None = None,
           log: bool = True, prepared: tuple | None = None, hits=None) -> dict:
    """The result for one decoded capture (files and uploads alike); `prepared`, this capture's
    `prepare(capture, embedder)`, and `hits`, its vector's search (see rank), when made already."""
    notes = []
    if threshold is None:
        threshold = db.threshold(SCORE_KIND, DEFAULT_THRESHOLD)
        notes = [note for note in [db.threshold_note(SCORE_KIND)] if note]
    margin = float(setting(db, "margin"))
    top_k = int(top_k or setting(db, "top_k"))
    features, vector = prepared or prepare(capture, embedder)
    ranked = rank(db, vector, features, top_k, int(setting(db, "shortlist")),
                  views=lambda: embedder.embed(views(capture.pixels)), threshold=threshold, searched=hits)
    decided = decide(ranked, threshold, margin)  # over every specimen verified, not only those listed
    if decided["specimen"]:  # the answer leads the list, ahead of a neighbour that verified as well
        ranked = sorted(ranked, key=lambda c: c["specimen"] != decided["specimen"])
    result = {"query": capture.name, **decided, "threshold": float(threshold), "margin": margin,
              "score_kind": SCORE_KIND, "candidates": ranked[:top_k], "exact": exact_copies(db, capture),
              # a low-quality query is answered, with a warning: the person is at the microscope
              "quality": capture.quality,
              "warnings": [*capture.warnings, *quality.problems(capture.quality, quality.limits(db)), *notes]}
    if log:
        result["query_id"] = db.log_queries([(result, capture)], embedder.model_id, top_k, __version__,
                                            SCORE_KIND)[0]
    return result

"""The baselines bench/accuracy.py runs on the same captures as specimen-id: file SHA-256,
pHash, the plain global-average-pooled CNN, and plain SIFT+RANSAC at a fixed inlier count."""

from __future__ import annotations

from collections import Counter

import numpy as np

from metrics import rates

from specimen_id import images, local_features, verification
from specimen_id.models.preprocess import to_rgb8

SIFT_BASELINE_INLIERS = 15
BASELINES = ("file SHA-256", "pHash", "plain GAP CNN", "plain SIFT+RANSAC")


def gap_vector(embedder, pixels) -> np.ndarray:
    """The plain baseline: the same network's feature map, global-average pooled."""
    v = embedder.trunk(embedder.preprocess(pixels)[None])[0].mean(axis=(1, 2))
    return v / np.linalg.norm(v)


def baseline_scores(dataset, embedder) -> dict:
    """Per query path: {baseline: [(specimen, similarity)] best first} over the whole gallery
    (plain SIFT+RANSAC over the 100 captures the plain CNN finds nearest)."""
    import imagehash
    from PIL import Image

    def load(path):
        capture = images.load(path)
        rgb = to_rgb8(capture.pixels)
        return {"sha": capture.file_sha256, "phash": imagehash.phash(Image.fromarray(rgb)),
                "gap": gap_vector(embedder, capture.pixels), "sift": local_features.extract(capture.pixels)}

    gallery = [(name, load(p)) for name, p in dataset.gallery]
    gap = np.array([g["gap"] for _, g in gallery])
    out = {}
    for q in dataset.queries:
        mine = load(q["path"])
        cosines = gap @ mine["gap"]
        nearest = np.argsort(-cosines)[:100]
        scores = {"file SHA-256": [(n, float(g["sha"] == mine["sha"])) for n, g in gallery],
                  "pHash": [(n, 1 - (mine["phash"] - g["phash"]) / 64) for n, g in gallery],
                  "plain GAP CNN": [(n, float(s)) for (n, _), s in zip(gallery, cosines)],
                  "plain SIFT+RANSAC": [(gallery[i][0], float(verification.verify(mine["sift"], gallery[i][1]["sift"]).inliers))
                                        for i in nearest]}
        out[q["path"]] = {k: _best_per_specimen(v) for k, v in scores.items()}
    return out


def _best_per_specimen(pairs):
    best = {}
    for name, s in sorted(pairs, key=lambda t: -t[1]):
        best.setdefault(name, s)
    return sorted(best.items(), key=lambda t: -t[1])


def baseline_thresholds(rows, baselines) -> dict:
    """Each baseline's decision threshold: SHA-256 needs identity, SIFT+RANSAC its fixed
    inlier count; pHash and the plain CNN the similarity their best-impostor scores reach at
    FMR 1% on the DSB tune half."""
    out = {"file SHA-256": 1.0, "plain SIFT+RANSAC": float(SIFT_BASELINE_INLIERS)}
    tune = [r for r in rows if r["part"] == "tune" and r["case"] == "simulated"]
    for name in ("pHash", "plain GAP CNN"):
        impostor = [next((s for n, s in baselines[r["query"]][name] if n != r["truth"]), 0.0) for r in tune]
        out[name] = float(np.quantile(impostor, 0.99)) if impostor else 1.0
    return out


def baseline_tally(rows, baselines, name: str, threshold: float) -> dict:
    c = Counter()
    genuine, impostor = [], []
    for r in rows:
        ranked = baselines[r["query"]][name]
        best, s = ranked[0] if ranked else (None, 0.0)
        tie = len(ranked) > 1 and ranked[1][1] == s  # a tie identifies nothing
        match = s >= threshold and not tie
        c["n"] += 1
        c["right"] += (match and best == r["truth"]) or (not match and not r["truth"])
        c["false"] += match and best != r["truth"]
        if r["truth"]:
            c["enrolled"] += 1
            c["top1"] += best == r["truth"] and not tie
            genuine.append(s if best == r["truth"] and not tie else -1.0)
        impostor.append(next((v for n, v in ranked if n != r["truth"] and n not in r["overlaps"]), 0.0))
    return {**c, **rates(genuine, impostor)}

"""Accuracy benchmark: does specimen-id name the right field, and refuse fields it never saw,
on real re-captures and on simulated ones?

Data sets, each enrolled into a fresh database and queried through the real pipeline (FAISS
shortlist, verification, fused score, decision):
- **Real re-captures** (../shared/data/real, every set there): another focus plane, a
  re-mounted slide, neighbouring tiles under one microscope's shading, with their truth.
- **DSB 2018, simulated** (../shared/data/dsb2018): 664 real images grouped into fields
  (bench/fields.json, so that the truth does not move with the recipe under test; --regroup
  finds them again), split by a seeded shuffle into a `tune` and a `test` half; in each, 80% of
  fields are enrolled from one simulated capture and every field is queried with another.
- **DSB under one microscope** (`pattern`): fields of each half brought to one camera's shape
  and seen, enrolled and queried, through one field stop, vignette and dust
  (specimen_id.simulate.FixedPattern): what every capture of a microscope shares.

The fusion (search/score.py) is fitted on genuine and impostor pairs of the real sets and the
two tune halves, each set weighing the same (pairs that overlap only partly are left out: the
placement rule, not the score, decides those). Every figure is reported on data the fusion was
not fitted on: the real sets leave one set out (each is scored by a fusion fitted without it),
the simulated sets on their test halves. Baselines run on the same captures in the same run:
file SHA-256, pHash and the plain global-average-pooled CNN (each decided at the similarity its
own best-impostor scores reach at FMR 1% on the DSB tune half), and plain SIFT+RANSAC decided at
a fixed 15 inliers.

    pip install -e '.[bench]'; python bench/accuracy.py [--data ../shared/data] [--dump FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results import table, write_section  # noqa: E402

import specimen_id  # noqa: E402
from specimen_id import images, local_features, verification  # noqa: E402
from specimen_id.models import load_embedder  # noqa: E402
from specimen_id.models.preprocess import to_rgb8  # noqa: E402
from specimen_id.search import score as scoring  # noqa: E402
from specimen_id.simulate import FixedPattern, Recapture  # noqa: E402
from specimen_id.store.settings import DEFAULTS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEED = 2018
GROUP_INLIERS = 15  # verified pairs of originals above this are one field (impostors stay <= 8)
FIELDS = Path(__file__).with_name("fields.json")  # the groups of more than one image, by file name
LOOKALIKE_COSINE = 0.90  # plain CNN cosine to another field at which fields count as look-alike
PATTERN_SHAPE = (320, 256)  # the simulated microscope's camera (width, height)
PATTERN_FIELDS = 120  # fields of each DSB half seen through it
SIFT_BASELINE_INLIERS = 15
ROBUST_FIELDS = 60  # test-half fields turned, cut and zoomed
TERMS = list(scoring.FUSION)
BASELINES = ("file SHA-256", "pHash", "plain GAP CNN", "plain SIFT+RANSAC")


@dataclass
class Dataset:
    name: str
    part: str  # "real", "tune" or "test": what it may be used for
    gallery: list = field(default_factory=list)  # (specimen, path)
    queries: list = field(default_factory=list)  # {"path", "truth", "case", "overlaps"}
    lookalike: set = field(default_factory=set)  # query paths of look-alike fields (DSB)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder holding dsb2018/ and real/")
    parser.add_argument("--dump", type=Path, help="write every query's candidates here (JSON)")
    parser.add_argument("--replay", type=Path, help="fit and report from a --dump instead of running")
    parser.add_argument("--regroup", action="store_true", help=f"find the DSB fields again, into {FIELDS.name}")
    args = parser.parse_args()
    started = time.time()
    if args.replay:
        rows, baselines = _load(args.replay)
    else:
        embedder = load_embedder()
        with tempfile.TemporaryDirectory() as tmp:
            sets = real_sets(args.data / "real") + dsb_sets(args.data / "dsb2018", Path(tmp), embedder, args.regroup)
            rows, baselines = [], {}
            for dataset in sets:
                print(f"{dataset.name}: enrolling {len(dataset.gallery)}, querying {len(dataset.queries)}",
                      file=sys.stderr)
                rows += identify(dataset, Path(tmp) / "db" / dataset.name, embedder)
                baselines.update(baseline_scores(dataset, embedder))
            print("real sets again, each with the fusion fitted without it", file=sys.stderr)
            rows += held_out(sets, rows, Path(tmp) / "held-out", embedder)
            print("robustness: turned, cut and zoomed re-captures of test fields", file=sys.stderr)
            rows += robustness(args.data / "dsb2018", Path(tmp) / "robust", embedder)
        if args.dump:
            args.dump.write_text(json.dumps({"rows": rows, "baselines": baselines}))
    report(rows, baselines, time.time() - started)


# -- data sets --------------------------------------------------------------------------------

def real_sets(root: Path) -> list[Dataset]:
    """Every set under ../shared/data/real, as its README describes them."""
    out = []
    for folder in sorted(p for p in root.iterdir() if (p / "truth.csv").exists()):
        dataset = Dataset(folder.name, "real")
        for specimen in sorted(p for p in (folder / "gallery").iterdir() if p.is_dir()):
            dataset.gallery += [(specimen.name, f) for f in images.visible_files(specimen)]
        with open(folder / "truth.csv", newline="") as f:
            for row in csv.DictReader(f):
                listed = row["detail"].split("overlaps", 1)[1] if "overlaps" in row["detail"] else ""
                overlaps = dict(re.findall(r"([^;\s:]+):([\d.]+)", listed))
                dataset.queries.append({"path": str(folder / "queries" / row["query"]),
                                        "truth": row["expected"] or None, "case": row["case"],
                                        "overlaps": {k: float(v) for k, v in overlaps.items()}})
        out.append(dataset)
    return out


def dsb_sets(data: Path, tmp: Path, embedder, regroup: bool) -> list[Dataset]:
    """The simulated sets: DSB fields re-captured (tune and test halves), and the same
    fields seen through one microscope's fixed pattern."""
    files = sorted(data.glob("*.png"))
    originals = [cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for f in files]
    if regroup or not FIELDS.exists():
        print(f"{len(files)} images; grouping fields", file=sys.stderr)
        save_fields(files, group_fields(originals, embedder.embed(originals)))
    groups = known_fields(files)
    labels = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    groups = np.array([labels[g] for g in groups])
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(labels))
    half = {int(g): ("tune" if k < len(labels) // 2 else "test") for k, g in enumerate(order)}
    enrolled = {}
    for part in ("tune", "test"):
        members = [int(g) for g in order if half[int(g)] == part]
        cut = int(round(len(members) * 0.8))
        enrolled.update({g: k < cut for k, g in enumerate(members)})
    sim = Recapture()
    sets = {part: Dataset(f"dsb2018 simulated, {part} half", part) for part in ("tune", "test")}
    lookalike = lookalike_fields(originals, groups, enrolled, embedder)
    for i, (path, rgb) in enumerate(zip(files, originals)):
        g = int(groups[i])
        dataset = sets[half[g]]
        if enrolled[g]:
            dataset.gallery.append((f"field-{g:04d}", _write(tmp / "dsb" / f"field-{g:04d}" / f"{path.stem[:12]}.jpg",
                                                             sim.jpeg_bytes(rgb, rng))))
        if i == int(np.flatnonzero(groups == g)[0]):  # one query per field
            query = _write(tmp / "dsb-query" / f"{g:04d}.jpg", sim.jpeg_bytes(rgb, rng))
            dataset.queries.append({"path": str(query), "truth": f"field-{g:04d}" if enrolled[g] else None,
                                    "case": "simulated", "overlaps": {}})
            if i in lookalike:
                dataset.lookalike.add(str(query))
    microscope = FixedPattern()
    patterned = {}
    for part, dataset in sets.items():
        seen = Dataset(f"dsb2018 through one microscope, {part} half", part)
        fields_here = [q for q in dataset.queries][:PATTERN_FIELDS]
        for q in fields_here:
            g = int(Path(q["path"]).stem)
            rgb = cv2.resize(originals[int(np.flatnonzero(groups == g)[0])], PATTERN_SHAPE, interpolation=cv2.INTER_AREA)
            if q["truth"]:
                seen.gallery.append((q["truth"], _write(tmp / "pattern" / q["truth"] / "1.jpg",
                                                        _jpeg(microscope.apply(sim.apply(rgb, rng)), rng))))
            seen.queries.append({"path": str(_write(tmp / "pattern-query" / f"{g:04d}.jpg",
                                                     _jpeg(microscope.apply(sim.apply(rgb, rng)), rng))),
                                 "truth": q["truth"], "case": "fixed pattern", "overlaps": {}})
        patterned[part] = seen
    return [sets["tune"], sets["test"], patterned["tune"], patterned["test"]]


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _jpeg(rgb: np.ndarray, rng) -> bytes:
    quality = int(rng.integers(*Recapture().jpeg))
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def known_fields(files) -> np.ndarray:
    """Each file's group as bench/fields.json records it (a group of its own when not listed)."""
    index = {f.name: i for i, f in enumerate(files)}
    groups = np.arange(len(files))
    for names in json.loads(FIELDS.read_text())["same field"]:
        members = [index[n] for n in names if n in index]
        groups[members] = min(members, default=0)
    return groups


def save_fields(files, groups) -> None:
    same = [[files[i].name for i in np.flatnonzero(groups == g)] for g in dict.fromkeys(groups)]
    FIELDS.write_text(json.dumps({
        "found by": f"python bench/accuracy.py --regroup (>= {GROUP_INLIERS} inliers between originals)",
        "same field": [names for names in same if len(names) > 1]}, indent=1) + "\n")


def group_fields(originals, vectors) -> np.ndarray:
    """Union-find over pairs of originals that verify as the same field."""
    feats = [local_features.extract(o) for o in originals]
    parent = list(range(len(originals)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    neighbours = np.argsort(-(vectors @ vectors.T), axis=1)[:, 1:61]
    for i, row in enumerate(neighbours):
        for j in row:
            if i < j and verification.verify(feats[i], feats[j]).inliers >= GROUP_INLIERS:
                parent[find(i)] = find(int(j))
    return np.array([find(i) for i in range(len(originals))])


def lookalike_fields(originals, groups, enrolled, embedder) -> set[int]:
    """Images queried for their field that have another enrolled field the plain CNN finds
    this alike."""
    first = {int(g): int(np.flatnonzero(groups == g)[0]) for g in np.unique(groups)}
    vectors = np.array([gap_vector(embedder, originals[i]) for i in first.values()])
    rows = list(first.values())
    sims = vectors @ vectors.T
    is_enrolled = np.array([enrolled[g] for g in first])
    np.fill_diagonal(sims, -1)
    return {rows[k] for k in range(len(rows)) if sims[k][is_enrolled].max(initial=-1) >= LOOKALIKE_COSINE}


def gap_vector(embedder, pixels) -> np.ndarray:
    """The plain baseline: the same network's feature map, global-average pooled."""
    v = embedder.trunk(embedder.preprocess(pixels)[None])[0].mean(axis=(1, 2))
    return v / np.linalg.norm(v)


# -- running and scoring ------------------------------------------------------------------------

def identify(dataset: Dataset, root: Path, embedder) -> list[dict]:
    """Enrol the gallery into a fresh database and query every query: one row per query with
    every candidate's evidence."""
    db = specimen_id.open_database(root)  # (an existing one is used as it is)
    jobs = defaultdict(list)
    for specimen, path in dataset.gallery:
        jobs[specimen].append(path)
    # every capture enrolled, whatever the intake quality gate says: this measures identification
    report_ = specimen_id.enroll_folders(db, sorted(jobs.items()), embedder=embedder, allow_low_quality=True)
    assert not report_.refused, report_.refused[:3]
    db.set_setting("shortlist", 100)
    results = specimen_id.query(db, [q["path"] for q in dataset.queries], top_k=100, embedder=embedder, log=False)
    rows = [{"set": dataset.name, "part": dataset.part, "case": q["case"], "query": q["path"],
             "truth": q["truth"], "overlaps": q["overlaps"], "lookalike": q["path"] in dataset.lookalike,
             "candidates": r["candidates"]} for q, r in zip(dataset.queries, results)]
    db.close()
    return rows


def held_out(sets, rows, tmp: Path, embedder) -> list[dict]:
    """Each real set queried again through the whole pipeline (shortlist, views, the capture
    that represents each specimen, decision) with the fusion fitted without it, so that no
    figure reported for it comes from a fit that saw it."""
    tune = [r for r in rows if r["part"] == "tune"]
    out = []
    for dataset in (d for d in sets if d.part == "real"):
        fusion = fit_fusion(tune + [r for r in rows if r["part"] == "real" and r["set"] != dataset.name])
        shipped, scoring.FUSION = scoring.FUSION, fusion
        try:
            again = identify(dataset, tmp / dataset.name, embedder)
        finally:
            scoring.FUSION = shipped
        out += [{**r, "part": "held out", "fusion": fusion} for r in again]
    return out


def robustness(data: Path, tmp: Path, embedder) -> list[dict]:
    """Re-captures of test-half fields turned, cut and zoomed (ROBUSTNESS kinds), each queried
    against the enrolled fields; zoomed out: each field enrolled as its centre enlarged, the
    whole field queried."""
    from specimen_id.models.views import _centre, _turned

    files = sorted(data.glob("*.png"))
    groups = known_fields(files)
    labels = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    first = {}
    for k, g in enumerate(groups):
        first.setdefault(labels[g], k)
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(labels))
    test = [int(g) for k, g in enumerate(order) if k >= len(labels) // 2][:ROBUST_FIELDS]
    sim, rng = Recapture(), np.random.default_rng(SEED + 1)
    fields = {g: cv2.cvtColor(cv2.imread(str(files[first[g]]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for g in test}
    kinds = {"turned 90 degrees": lambda x: _turned(x, 90), "turned 180 degrees": lambda x: _turned(x, 180),
             "turned 30 degrees": lambda x: _turned(x, 30),
             "left 60% of the field": lambda x: np.ascontiguousarray(x[:, :int(x.shape[1] * 0.6)]),
             "zoomed in 1.5x": lambda x: _centre(x, 2 / 3), "zoomed in 2x": lambda x: _centre(x, 1 / 2),
             # between the views the shortlist tries (models/views.py), as a user's zoom wheel is
             "turned 67 degrees": lambda x: _turned(x, 67), "zoomed in 1.7x": lambda x: _centre(x, 1 / 1.7)}
    rows = []
    plain = Dataset("robustness", "robust", [(f"field-{g:04d}", _write(tmp / "enrol" / f"{g:04d}.jpg",
                                                                      sim.jpeg_bytes(rgb, rng)))
                                             for g, rgb in fields.items()])
    for kind, change in kinds.items():
        plain.queries = [{"path": str(_write(tmp / kind / f"{g:04d}.jpg", _jpeg(change(sim.apply(rgb, rng)), rng))),
                          "truth": f"field-{g:04d}", "case": kind, "overlaps": {}} for g, rgb in fields.items()]
        rows += identify(plain, tmp / "db", embedder)
    for zoom in (1.5, 2.0):  # the enrolled field is the centre, seen closer; the query the whole
        closer = Dataset("robustness", "robust",
                         [(f"field-{g:04d}", _write(tmp / f"close-{zoom}" / f"{g:04d}.jpg",
                                                    _jpeg(_centre(sim.apply(rgb, rng), 1 / zoom), rng)))
                          for g, rgb in fields.items()])
        closer.queries = [{"path": str(_write(tmp / f"out-{zoom}" / f"{g:04d}.jpg", sim.jpeg_bytes(rgb, rng))),
                           "truth": f"field-{g:04d}", "case": f"zoomed out {zoom:g}x", "overlaps": {}}
                          for g, rgb in fields.items()]
        rows += identify(closer, tmp / f"db-{zoom}", embedder)
    return rows


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


def ece(decided: list[dict], bins: int = 10) -> float:
    """Expected calibration error over each query's two best candidates (the bulk of easy
    impostors near 0 would make any model look calibrated)."""
    pairs = [(s, float(t)) for d in decided for t, s in d["top2"]]
    p, y = np.array([s for s, _ in pairs]), np.array([t for _, t in pairs])
    total = 0.0
    for lo in np.linspace(0, 1, bins + 1)[:-1]:
        inside = (p >= lo) & ((p < lo + 1 / bins) if lo + 1 / bins < 1 else (p <= 1))
        if inside.any():
            total += inside.mean() * abs(p[inside].mean() - y[inside].mean())
    return float(total)


def rates(genuine, impostor, fmr_targets=(0.01, 0.001)) -> dict:
    """TAR at the threshold that keeps FMR at or under each target, and the EER."""
    genuine, impostor = np.asarray(genuine, float), np.asarray(impostor, float)
    out = {}
    candidates = np.unique(np.concatenate([impostor, genuine, [np.inf]]))
    for target in fmr_targets:
        t = min(t for t in candidates if np.mean(impostor >= t) <= target)
        out[target] = float(np.mean(genuine >= t))
    grid = np.unique(np.concatenate([impostor, genuine]))
    fmr = np.array([np.mean(impostor >= t) for t in grid])
    fnmr = np.array([np.mean(genuine < t) for t in grid])
    i = int(np.argmin(np.abs(fmr - fnmr)))
    out["eer"] = float((fmr[i] + fnmr[i]) / 2)
    return out


# -- baselines ------------------------------------------------------------------------------

def baseline_scores(dataset: Dataset, embedder) -> dict:
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


# -- report ---------------------------------------------------------------------------------

def report(rows, baselines, seconds: float) -> None:
    tune = [r for r in rows if r["part"] == "tune"]
    folds, fitted_without = [], {}
    for name in sorted({r["set"] for r in rows if r["part"] == "held out"}):
        again = [r for r in rows if r["part"] == "held out" and r["set"] == name]
        fitted_without[name] = again[0]["fusion"]
        folds += decisions(again, again[0]["fusion"])
    shipped = fit_fusion(tune + [r for r in rows if r["part"] == "real"])
    test = decisions([r for r in rows if r["part"] == "test"], scoring.FUSION)
    thresholds = baseline_thresholds(rows, baselines)
    sections = [real_section(folds, rows, baselines, thresholds, fitted_without),
                simulated_section(test, rows, baselines, thresholds),
                robustness_section(decisions([r for r in rows if r["part"] == "robust"], scoring.FUSION)),
                fit_section(shipped, folds, test, rows, seconds)]
    body = "\n\n".join(sections)
    print(body)
    write_section("accuracy", body)


def _row(label, t) -> tuple:
    top1 = f"{t['top1'] / t['enrolled']:.3f}" if t["enrolled"] else ""
    return (label, t["n"], f"{t['right'] / t['n']:.3f}", top1, t.get("ambiguous", ""), t["false"])


def real_section(folds, rows, baselines, thresholds, fitted_without) -> str:
    header = ("set / case", "queries", "decisions right", "top-1", "ambiguous", "false matches")
    lines = []
    by_set = defaultdict(list)
    for d in folds:
        by_set[d["row"]["set"]].append(d)
    for name, decided in sorted(by_set.items()):
        lines.append(_row(f"**{name}**", tally(decided)))
        for case in sorted({d["row"]["case"] for d in decided}):
            lines.append(_row(f"{name} / {case}", tally([d for d in decided if d["row"]["case"] == case])))
    pooled = tally(folds)
    lines.append(_row("**all real sets, pooled**", pooled))
    base = []
    real_rows = [r for r in rows if r["part"] == "real"]
    for name in BASELINES:
        for set_name in sorted({r["set"] for r in real_rows}):
            t = baseline_tally([r for r in real_rows if r["set"] == set_name], baselines, name, thresholds[name])
            base.append(_row(f"{name}, {set_name}", t))
        base.append(_row(f"**{name}, pooled**", baseline_tally(real_rows, baselines, name, thresholds[name])))
    return (
        "## Identification accuracy (bench/accuracy.py)\n\n"
        "### Real re-captures, leave one set out\n\n"
        "Each set of ../shared/data/real queried again through the whole pipeline with a fusion "
        "fitted without it (on the other real sets and the simulated tune halves); decided at the "
        "default threshold "
        f"{scoring.DEFAULT_THRESHOLD} and margin {DEFAULTS['margin']}, with the placement rule "
        f"(the query shows a field when at least {scoring.SHOWS:.0%} of either lies in the other). "
        "Right: `match` to the expected field, or `no_match` for a field never enrolled; "
        "`ambiguous` is neither right nor false. Top-1: the expected field is the first candidate "
        "the query shows (queries of enrolled fields).\n\n"
        + table(header, lines)
        + f"\n\nExpected calibration error on the held-out sets' best two candidates per query: "
        f"{ece(folds):.3f}. Fusions fitted without each set: "
        + "; ".join(f"{k}: {v}" for k, v in fitted_without.items())
        + f".\n\nBaselines on the same captures (pHash and plain CNN decided at the similarity of FMR "
        f"1% on the DSB tune half: {thresholds['pHash']:.3f} and {thresholds['plain GAP CNN']:.3f}; "
        f"SIFT+RANSAC at {SIFT_BASELINE_INLIERS} inliers):\n\n" + table(header, base))


def simulated_section(test, rows, baselines, thresholds) -> str:
    header = ("method", "queries", "top-1", "TAR @ FMR 1%", "TAR @ FMR 0.1%", "EER", "decisions right",
              "ambiguous", "false matches", "ECE (top-2)")
    lines = []
    for set_name in sorted({d["row"]["set"] for d in test}):
        subsets = [(set_name, [d for d in test if d["row"]["set"] == set_name])]
        if any(d["row"]["lookalike"] for d in subsets[0][1]):
            subsets.append((f"{set_name}, look-alike fields",
                            [d for d in subsets[0][1] if d["row"]["lookalike"]]))
        for label, decided in subsets:
            t = tally(decided)
            r = rates([d["genuine"] for d in decided if d["row"]["truth"]], [d["impostor"] for d in decided])
            lines.append((f"specimen-id: {label}", t["n"], f"{t['top1'] / t['enrolled']:.3f}", f"{r[0.01]:.3f}",
                          f"{r[0.001]:.3f}", f"{r['eer']:.3f}", f"{t['right'] / t['n']:.3f}", t["ambiguous"],
                          t["false"], f"{ece(decided):.3f}"))
            for name in BASELINES:
                b = baseline_tally([d["row"] for d in decided], baselines, name, thresholds[name])
                lines.append((f"{name}: {label}", b["n"], f"{b['top1'] / b['enrolled']:.3f}", f"{b[0.01]:.3f}",
                              f"{b[0.001]:.3f}", f"{b['eer']:.3f}", f"{b['right'] / b['n']:.3f}", "", b["false"], ""))
    sim = Recapture().describe()
    return ("### Simulated re-captures, test halves (shipped fusion)\n\n"
            f"Simulation: {json.dumps(sim)}; the microscope: {json.dumps(FixedPattern().describe())}, "
            f"{PATTERN_FIELDS} fields of each half at {PATTERN_SHAPE[0]}x{PATTERN_SHAPE[1]}. Genuine score: the "
            "true field's score when it is the first field shown; impostor score: the best wrong "
            "specimen's, for every query. Look-alike: fields with another enrolled field at plain CNN "
            f"cosine >= {LOOKALIKE_COSINE}.\n\n" + table(header, lines))


def robustness_section(decided) -> str:
    header = ("kind", "queries", "decisions right", "top-1", "ambiguous", "false matches")
    lines = [_row(case, tally([d for d in decided if d["row"]["case"] == case]))
             for case in dict.fromkeys(d["row"]["case"] for d in decided)]
    return ("### Turned, cut and zoomed (shipped fusion)\n\n"
            f"{ROBUST_FIELDS} enrolled fields of the DSB test half, each queried with a simulated "
            "re-capture turned about its centre (30 and 67 degrees: corners filled by reflection), "
            "cut to the left 60% of its width, or with its centre 2/3, 1/1.7 or 1/2 enlarged back to "
            "full size (bicubic); zoomed out: each field enrolled as its centre 2/3 (1/2) enlarged, "
            "and the whole field queried. 67 degrees and 1.7x lie between the turned and zoomed "
            "views the shortlist tries when the plain query finds nothing.\n\n" + table(header, lines))


def fit_section(shipped, folds, test, rows, seconds) -> str:
    changed = shipped != {k: round(v, 2) for k, v in scoring.FUSION.items()}
    note = (" It differs from the one shipped: paste it into search/score.py and run again."
            if changed else " It is the one shipped in search/score.py.")
    n_pairs = sum(len(r["candidates"]) for r in rows)
    return (f"### The fusion\n\nFitted on the real sets and both tune halves: {shipped}.{note} "
            f"{len(rows)} queries, {n_pairs} verified pairs. Run time {seconds / 60:.1f} min.")


def _load(path: Path):
    data = json.loads(path.read_text())
    return data["rows"], data["baselines"]


if __name__ == "__main__":
    main()

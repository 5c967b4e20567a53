"""Accuracy benchmark: does specimen-id name the right field, and refuse fields it never saw?

Built on the 664 real DSB 2018 images (../shared/data/dsb2018):
1. Fields are grouped: images whose originals verify against each other (>= GROUP_INLIERS
   RANSAC inliers) show the same field, and a group is never split across enrolled/unseen.
   The groups found are kept in bench/fields.json and read from there (--regroup finds them
   again), so that the truth does not move with the local-feature recipe under test.
2. Groups are split in two halves by a seeded shuffle: `tune` (fusion weights, threshold) and
   `test` (every figure reported). In each half, 80% of groups are enrolled (each image from its
   own simulated capture) and 20% are never enrolled.
3. Every group's first image is queried with a fresh simulated re-capture (specimen_id.simulate,
   seed below) through the real database, FAISS shortlist and verification.
4. Baselines run on the same captures: file SHA-256, perceptual hash (imagehash pHash) and the
   plain global-average-pooled CNN.

    pip install -e '.[bench]'; python bench/accuracy.py [--data ../shared/data/dsb2018] [--regroup]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results import table, write_section  # noqa: E402

import specimen_id  # noqa: E402
from specimen_id import images, local_features, quality  # noqa: E402
from specimen_id.models import load_embedder  # noqa: E402
from specimen_id.search import score as scoring  # noqa: E402
from specimen_id.simulate import Recapture  # noqa: E402
from specimen_id.store.settings import DEFAULTS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEED = 2018
GROUP_INLIERS = 15  # verified pairs of originals above this are one field (impostors stay <= 8)
FIELDS = Path(__file__).with_name("fields.json")  # the groups of more than one image, by file name
LOOKALIKE_COSINE = 0.90
TERMS = list(scoring.FUSION)  # plain CNN cosine to another field at which fields count as look-alike


def sigmoid(z):
    return 1 / (1 + np.exp(-np.clip(z, -700, 700)))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 50) -> np.ndarray:
    """Logistic regression by Newton's method (IRLS); x has a leading column of ones."""
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = sigmoid(x @ w)
        gradient = x.T @ (p - y) + l2 * w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        w -= np.linalg.solve(hessian, gradient)
    return w


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
            if i < j and local_features.verify(feats[i], feats[j]).inliers >= GROUP_INLIERS:
                parent[find(i)] = find(int(j))
    return np.array([find(i) for i in range(len(originals))])


def rates(genuine, impostor, fmr_targets=(0.01, 0.001)):
    """TAR at the threshold that keeps FMR at or under each target, and the EER."""
    genuine, impostor = np.asarray(genuine, float), np.asarray(impostor, float)
    out = {}
    for target in fmr_targets:
        # smallest threshold t with share(impostor >= t) <= target
        candidates = np.unique(np.concatenate([impostor, genuine, [np.inf]]))
        ok = [t for t in candidates if np.mean(impostor >= t) <= target]
        t = min(ok)
        out[target] = (float(np.mean(genuine >= t)), float(t))
    grid = np.unique(np.concatenate([impostor, genuine]))
    fmr = np.array([np.mean(impostor >= t) for t in grid])
    fnmr = np.array([np.mean(genuine < t) for t in grid])
    i = int(np.argmin(np.abs(fmr - fnmr)))
    out["eer"] = float((fmr[i] + fnmr[i]) / 2)
    return out


def ece(probabilities, labels, bins: int = 10) -> float:
    """Expected calibration error: |predicted - observed| share of same-field, bin-weighted."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (probabilities >= lo) & (probabilities < hi if hi < 1 else probabilities <= hi)
        if inside.any():
            total += inside.mean() * abs(probabilities[inside].mean() - labels[inside].mean())
    return float(total)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "dsb2018")
    parser.add_argument("--limit", type=int, default=0, help="first N images only (a quick look)")
    parser.add_argument("--dump", type=Path, help="write every query's candidates here (JSON)")
    parser.add_argument("--regroup", action="store_true", help=f"find the fields again, into {FIELDS.name}")
    args = parser.parse_args()
    started = time.time()
    files = sorted(args.data.glob("*.png"))[: args.limit or None]
    sim = Recapture()
    rng = np.random.default_rng(SEED)
    embedder = load_embedder()
    originals = [cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for f in files]
    if args.regroup or not FIELDS.exists():
        print(f"{len(files)} images; grouping fields", file=sys.stderr)
        groups = group_fields(originals, embedder.embed(originals))
        if not args.limit:
            save_fields(files, groups)
    else:
        groups = known_fields(files)
    labels = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    groups = np.array([labels[g] for g in groups])
    n_groups = len(labels)

    order = rng.permutation(n_groups)
    half = {int(g): ("tune" if k < n_groups // 2 else "test") for k, g in enumerate(order)}
    enrolled = {}
    for part in ("tune", "test"):
        members = [g for g in order if half[int(g)] == part]
        cut = int(round(len(members) * 0.8))
        enrolled.update({int(g): True for g in members[:cut]})
        enrolled.update({int(g): False for g in members[cut:]})

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jobs, queries = {}, []
        for i, (path, rgb) in enumerate(zip(files, originals)):
            g = int(groups[i])
            if enrolled[g]:
                capture = tmp / "enrol" / f"field-{g:04d}" / f"{path.stem[:12]}.jpg"
                capture.parent.mkdir(parents=True, exist_ok=True)
                capture.write_bytes(sim.jpeg_bytes(rgb, rng))
                jobs.setdefault(f"field-{g:04d}", []).append(capture)
            if i == int(np.flatnonzero(groups == g)[0]):  # one query per field
                query = tmp / "query" / f"{g:04d}.jpg"
                query.parent.mkdir(parents=True, exist_ok=True)
                query.write_bytes(sim.jpeg_bytes(rgb, rng))
                queries.append((g, i, query))
        print(f"{n_groups} fields; enrolling {sum(map(len, jobs.values()))} captures", file=sys.stderr)
        db = specimen_id.open_database(tmp / "db")
        # every field enrolled, whatever the intake quality gate would say: this measures
        # identification; how many captures the gate would refuse is printed below
        report = specimen_id.enroll_folders(db, sorted(jobs.items()), embedder=embedder, progress=True,
                                            allow_low_quality=True)
        assert not report.refused, report.refused[:3]
        gated = sum(bool(quality.problems(c.quality, quality.LIMITS))
                    for paths in jobs.values() for c in map(images.load, paths))
        print(f"{gated} of {len(report.enrolled)} enrolled captures are below the default quality "
              "limits (enrolled anyway)", file=sys.stderr)
        db.set_setting("shortlist", 100)
        print(f"querying {len(queries)} captures", file=sys.stderr)
        results = list(specimen_id.query(db, [q for _, _, q in queries], top_k=100,
                                         embedder=embedder, log=False))
        baseline = baselines(jobs, queries, embedder)
        db.close()

    rows = []
    for (g, i, _), result in zip(queries, results):
        truth = f"field-{g:04d}" if enrolled[g] else None
        rows.append({"part": half[g], "truth": truth, "candidates": result["candidates"], "i": i})
    lookalike = lookalike_fields(originals, queries, enrolled, embedder)
    if args.dump:
        args.dump.write_text(json.dumps({"rows": rows, "lookalike": sorted(lookalike),
                                         "files": [f.name for f in files]}))

    tune = [r for r in rows if r["part"] == "tune"]
    x, y = pair_features(tune)
    w = fit_logistic(x, y)
    fitted = {name: round(float(v), 2) for name, v in zip(TERMS, w)}
    shipped = dict(scoring.FUSION)
    threshold = choose_threshold(tune, shipped)
    report = evaluate(rows, lookalike, shipped, scoring.DEFAULT_THRESHOLD, baseline)
    if fitted != {k: round(v, 2) for k, v in shipped.items()}:
        print("fitted fusion differs from the shipped one; paste it into search/score.py:",
              fitted, file=sys.stderr)
    write_report(report, fitted, shipped, threshold, sim, n_groups, groups, queries, enrolled,
                 time.time() - started)


def terms(candidate) -> list[float]:
    t = scoring.evidence_terms(candidate["cnn_similarity"], candidate["inliers"], candidate["correlation"])
    return [t[name] for name in TERMS]


def pair_features(rows):
    """(x, y) over every verified (query, specimen) pair: genuine when it is the true field."""
    x = [terms(c) for r in rows for c in r["candidates"]]
    y = [float(c["specimen"] == r["truth"]) for r in rows for c in r["candidates"]]
    return np.array(x), np.array(y)


def rescored(row, fusion):
    """The row's candidates scored with these fusion weights, best first."""
    scored = [(c["specimen"], scoring.fused(c["cnn_similarity"], c["inliers"], c["correlation"], fusion))
              for c in row["candidates"]]
    return sorted(scored, key=lambda t: -t[1])


def choose_threshold(rows, fusion, fmr=0.001):
    impostor = [s for r in rows for name, s in rescored(r, fusion) if name != r["truth"]]
    return float(np.quantile(impostor, 1 - fmr))


def scores_of(rows, fusion):
    """Genuine: the true specimen's score when ranked first (else it cannot be accepted);
    impostor: the best wrong specimen's score for every query (what a false match needs)."""
    genuine, impostor, top1 = [], [], []
    for r in rows:
        ranked = rescored(r, fusion)
        wrong = [s for name, s in ranked if name != r["truth"]]
        impostor.append(wrong[0] if wrong else 0.0)
        if r["truth"]:
            first = bool(ranked) and ranked[0][0] == r["truth"]
            top1.append(first)
            genuine.append(ranked[0][1] if first else 0.0)
    return genuine, impostor, top1


def evaluate(rows, lookalike, fusion, threshold, baseline):
    out = {}
    for part_name, subset in (("test", lambda r: r["part"] == "test"),
                              ("test, look-alike", lambda r: r["part"] == "test" and r["i"] in lookalike)):
        chosen = [r for r in rows if subset(r)]
        genuine, impostor, top1 = scores_of(chosen, fusion)
        correct = ambiguous = false_match = 0
        for r in chosen:
            ranked = rescored(r, fusion)
            candidates = [{"specimen": n, "score": s} for n, s in ranked]
            decision, specimen, _ = scoring.decide(candidates, threshold, DEFAULTS["margin"])
            ambiguous += decision == "ambiguous"
            correct += (decision == "match" and specimen == r["truth"]) or (decision == "no_match" and not r["truth"])
            false_match += decision == "match" and specimen != r["truth"]
        # calibration on the pairs that matter: each query's two best candidates (the bulk of
        # easy impostors near 0 would make any model look calibrated)
        top2 = [(n == r["truth"], s) for r in chosen for n, s in rescored(r, fusion)[:2]]
        probabilities, truths = [s for _, s in top2], [float(t) for t, _ in top2]
        out[part_name] = {"ours": {"n": len(chosen), "enrolled": len(genuine), "top1": np.mean(top1),
                                   **rates(genuine, impostor), "correct": correct / len(chosen),
                                   "ambiguous": ambiguous / len(chosen),
                                   "false_match": false_match / len(chosen),
                                   "ece": ece(probabilities, truths)}}
        for name, per_query in baseline.items():
            picked = [per_query[r["i"]] for r in chosen]
            out[part_name][name] = baseline_rates(picked, [r["truth"] for r in chosen])
    return out


def baseline_rates(per_query, truths):
    genuine, impostor, top1 = [], [], []
    for ranked, truth in zip(per_query, truths):
        wrong = [s for name, s in ranked if name != truth]
        impostor.append(wrong[0] if wrong else 0.0)
        if truth:  # first, and strictly ahead (a tie of all zeros identifies nothing)
            first = ranked[0][0] == truth and (len(ranked) == 1 or ranked[0][1] > ranked[1][1])
            top1.append(first)
            genuine.append(ranked[0][1] if first else -1.0)
    return {"top1": np.mean(top1), **rates(genuine, impostor)}


def baselines(jobs, queries, embedder):
    """Per query index: [(specimen, similarity)] best first, for each baseline method."""
    import imagehash
    from PIL import Image

    def gap(pixels):
        return gap_vector(embedder, pixels)

    enrolled = [(name, p) for name, paths in jobs.items() for p in paths]
    decoded = {p: images.load(p) for _, p in enrolled}
    sha = [(n, decoded[p].file_sha256) for n, p in enrolled]
    phash = [(n, imagehash.phash(Image.fromarray(decoded[p].pixels))) for n, p in enrolled]
    gap_vectors = np.array([gap(decoded[p].pixels) for _, p in enrolled])
    out = {"file SHA-256": {}, "pHash": {}, "plain GAP CNN": {}}

    def best_per_specimen(pairs):
        best = {}
        for name, s in sorted(pairs, key=lambda t: -t[1]):
            best.setdefault(name, s)
        return sorted(best.items(), key=lambda t: -t[1])

    for _, i, query in queries:
        q = images.load(query)
        out["file SHA-256"][i] = best_per_specimen([(n, float(h == q.file_sha256)) for n, h in sha])
        qh = imagehash.phash(Image.fromarray(q.pixels))
        out["pHash"][i] = best_per_specimen([(n, 1 - (qh - h) / 64) for n, h in phash])
        sims = gap_vectors @ gap(q.pixels)
        out["plain GAP CNN"][i] = best_per_specimen(list(zip([n for n, _ in enrolled], sims.tolist())))
    return out


def gap_vector(embedder, pixels) -> np.ndarray:
    """The plain baseline: the same network's feature map, global-average pooled."""
    v = embedder.trunk(embedder.preprocess(pixels)[None])[0].mean(axis=(1, 2))
    return v / np.linalg.norm(v)


def lookalike_fields(originals, queries, enrolled, embedder):
    """Queried fields with another enrolled field that the plain CNN finds this alike."""
    vectors = np.array([gap_vector(embedder, o) for o in originals])
    sims = vectors @ vectors.T
    query_rows = [i for _, i, _ in queries]
    enrolled_rows = [i for g, i, _ in queries if enrolled[g]]
    return {i for i in query_rows if max((sims[i, j] for j in enrolled_rows if j != i), default=0) >= LOOKALIKE_COSINE}


def write_report(report, fitted, shipped, threshold, sim, n_groups, groups, queries, enrolled, seconds):
    header = ("method", "top-1", "TAR @ FMR 1%", "TAR @ FMR 0.1%", "EER", "correct at default",
              "ambiguous", "false match", "ECE (top-2 pairs)")
    sections = []
    for part, methods in report.items():
        ours = methods["ours"]
        lines = [("specimen-id (regional GeM + verification, fused)", f"{ours['top1']:.3f}", f"{ours[0.01][0]:.3f}",
                  f"{ours[0.001][0]:.3f}", f"{ours['eer']:.3f}", f"{ours['correct']:.3f}",
                  f"{ours['ambiguous']:.3f}", f"{ours['false_match']:.3f}", f"{ours['ece']:.3f}")]
        for name in ("plain GAP CNN", "pHash", "file SHA-256"):
            m = methods[name]
            lines.append((name, f"{m['top1']:.3f}", f"{m[0.01][0]:.3f}", f"{m[0.001][0]:.3f}",
                          f"{m['eer']:.3f}", "", "", "", ""))
        sections.append(f"**{part}**: {ours['n']} queries, {ours['enrolled']} of enrolled fields\n\n"
                        + table(header, lines))
    multi = int(sum(np.bincount(groups) > 1))
    body = (
        "## Identification accuracy on DSB 2018 (bench/accuracy.py)\n\n"
        f"{len(groups)} images in {n_groups} fields ({multi} fields hold near-copies, grouped by "
        f">= {GROUP_INLIERS} verified inliers between originals). Seeded split of fields (seed "
        f"{SEED}): half tune, half test; 80% of each half enrolled, 20% never enrolled; one "
        "simulated re-capture queried per field. Look-alike subset: queried fields with another "
        f"enrolled field at plain GAP CNN cosine >= {LOOKALIKE_COSINE}. Genuine score: the true "
        "specimen's score when ranked first; impostor score: the best wrong specimen's score for "
        "every query. Correct at default: match to the right specimen, or no_match for a field "
        "never enrolled, at the shipped threshold "
        f"{scoring.DEFAULT_THRESHOLD}; ambiguous answers are neither correct nor false matches.\n\n"
        f"Simulation: {json.dumps(sim.describe())}.\n\n" + "\n\n".join(sections) + "\n\n"
        f"Fusion fitted on the tune half: {fitted}; shipped in search/score.py: {shipped}. "
        f"Threshold for FMR 0.1% per comparison on the tune half: {threshold:.3f} (shipped default "
        f"{scoring.DEFAULT_THRESHOLD}). Run time {seconds / 60:.1f} min."
    )
    print(body)
    write_section("accuracy", body)


if __name__ == "__main__":
    main()

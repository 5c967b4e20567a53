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

The data sets are built in bench/datasets.py, the baselines in bench/baselines.py, the fusion's
fit and the decisions replayed from candidates in bench/fusion.py.

    pip install -e '.[bench]'; python bench/accuracy.py [--data ../shared/data] [--dump FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from baselines import BASELINES, SIFT_BASELINE_INLIERS, baseline_scores, baseline_tally, baseline_thresholds  # noqa: E402
from datasets import (FIELDS, LOOKALIKE_COSINE, PATTERN_FIELDS, PATTERN_SHAPE, SEED, Dataset, dsb_fields,  # noqa: E402
                      dsb_sets, jpeg, real_sets, write)
from fusion import decisions, fit_fusion, tally  # noqa: E402
from metrics import ece, rates  # noqa: E402
from results import table, write_section  # noqa: E402

import specimen_id  # noqa: E402
from specimen_id.models import load_embedder  # noqa: E402
from specimen_id.search import score as scoring  # noqa: E402
from specimen_id.simulate import FixedPattern, Recapture  # noqa: E402
from specimen_id.config import DEFAULTS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ROBUST_FIELDS = 60  # test-half fields turned, cut and zoomed
FEW_OBJECTS = 5  # in the view two captures share: a sparse field seen at 2x shows this few
THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)


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
    groups, order = dsb_fields(files, np.random.default_rng(SEED))
    first = {}
    for k, g in enumerate(groups):
        first.setdefault(int(g), k)
    test = [int(g) for g in order[len(order) // 2:]][:ROBUST_FIELDS]
    sim, rng = Recapture(), np.random.default_rng(SEED + 1)
    fields = {g: cv2.cvtColor(cv2.imread(str(files[first[g]]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for g in test}
    kinds = {"turned 90 degrees": lambda x: _turned(x, 90), "turned 180 degrees": lambda x: _turned(x, 180),
             "turned 30 degrees": lambda x: _turned(x, 30),
             "left 60% of the field": lambda x: np.ascontiguousarray(x[:, :int(x.shape[1] * 0.6)]),
             "zoomed in 1.5x": lambda x: _centre(x, 2 / 3), "zoomed in 2x": lambda x: _centre(x, 1 / 2),
             # between the views the shortlist tries (models/views.py), as a user's zoom wheel is
             "turned 67 degrees": lambda x: _turned(x, 67), "zoomed in 1.7x": lambda x: _centre(x, 1 / 1.7)}
    # the part of the field both captures show: where any evidence can come from
    # (zoomed out: the enrolled centre, which the zoomed-in query shows too)
    shown = {kind: kinds[kind] for kind in ("zoomed in 1.5x", "zoomed in 2x", "zoomed in 1.7x", "left 60% of the field")}
    shown |= {"zoomed out 1.5x": kinds["zoomed in 1.5x"], "zoomed out 2x": kinds["zoomed in 2x"]}
    rows = []
    plain = Dataset("robustness", "robust", [(f"field-{g:04d}", write(tmp / "enrol" / f"{g:04d}.jpg",
                                                                      sim.jpeg_bytes(rgb, rng)))
                                             for g, rgb in fields.items()])
    for kind, change in kinds.items():
        plain.queries = [{"path": str(write(tmp / kind / f"{g:04d}.jpg", jpeg(change(sim.apply(rgb, rng)), rng))),
                          "truth": f"field-{g:04d}", "case": kind, "overlaps": {}} for g, rgb in fields.items()]
        rows += identify(plain, tmp / "db", embedder)
    for zoom in (1.5, 2.0):  # the enrolled field is the centre, seen closer; the query the whole
        closer = Dataset("robustness", "robust",
                         [(f"field-{g:04d}", write(tmp / f"close-{zoom}" / f"{g:04d}.jpg",
                                                    jpeg(_centre(sim.apply(rgb, rng), 1 / zoom), rng)))
                          for g, rgb in fields.items()])
        closer.queries = [{"path": str(write(tmp / f"out-{zoom}" / f"{g:04d}.jpg", sim.jpeg_bytes(rgb, rng))),
                           "truth": f"field-{g:04d}", "case": f"zoomed out {zoom:g}x", "overlaps": {}}
                          for g, rgb in fields.items()]
        rows += identify(closer, tmp / f"db-{zoom}", embedder)
    for row in rows:
        row["objects"] = objects(shown.get(row["case"], lambda x: x)(fields[int(row["truth"][len("field-"):])]))
    return rows


def objects(rgb) -> int:
    """Objects in a field: pieces of Otsu's foreground (dark ones on a bright field) at 256 px,
    of at least 1/2000 of the field. Touching nuclei are one piece, and a dim nucleus beside a
    bright one may fall below the threshold: a lower bound."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = 256 / max(grey.shape)
    grey = cv2.GaussianBlur(cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), (0, 0), 1.0)
    grey = 255 - grey if np.median(grey) > 127 else grey
    _, mask = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    return int(np.sum(stats[1:, cv2.CC_STAT_AREA] >= mask.size / 2000))


# -- baselines ------------------------------------------------------------------------------

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
                threshold_section(rows),
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
    header = ("kind", "queries", "decisions right", "top-1", "ambiguous", "false matches",
              f"right, <= {FEW_OBJECTS} objects in view", "right, more objects")
    lines = []
    for case in dict.fromkeys(d["row"]["case"] for d in decided):
        chosen = [d for d in decided if d["row"]["case"] == case]
        few = [d for d in chosen if d["row"]["objects"] <= FEW_OBJECTS]
        many = [d for d in chosen if d["row"]["objects"] > FEW_OBJECTS]
        lines.append(_row(case, tally(chosen)) + tuple(f"{tally(part)['right']}/{len(part)}" for part in (few, many)))
    return ("### Turned, cut and zoomed (shipped fusion)\n\n"
            f"{ROBUST_FIELDS} enrolled fields of the DSB test half, each queried with a simulated "
            "re-capture turned about its centre (30 and 67 degrees: corners filled by reflection), "
            "cut to the left 60% of its width, or with its centre 2/3, 1/1.7 or 1/2 enlarged back to "
            "full size (bicubic); zoomed out: each field enrolled as its centre 2/3 (1/2) enlarged, "
            "and the whole field queried. 67 degrees and 1.7x lie between the turned and zoomed "
            "views the shortlist tries when the plain query finds nothing. Objects in view: nuclei and "
            "other objects (Otsu's foreground, pieces of at least 1/2000 of the view) in the part of the field "
            "both captures show.\n\n" + table(header, lines))


def threshold_section(rows) -> str:
    """What the default threshold costs and buys: the same queries decided at other thresholds
    (each real set with the fusion fitted without it, the rest with the shipped one)."""
    parts = {"real sets, pooled, each held out": "held out", "DSB tune halves": "tune",
             "DSB test halves": "test", "turned, cut and zoomed": "robust"}
    header = ("threshold", *(f"{label}: right / false" for label in parts))
    lines = []
    for threshold in THRESHOLDS:
        cells = []
        for part in parts.values():
            chosen = [r for r in rows if r["part"] == part]
            fusions = {r["set"]: r.get("fusion", scoring.FUSION) for r in chosen}
            decided = [d for name, fusion in fusions.items()
                       for d in decisions([r for r in chosen if r["set"] == name], fusion, threshold)]
            t = tally(decided)
            cells.append(f"{t['right'] / max(t['n'], 1):.3f} / {t['false']}")
        mark = " (default)" if threshold == scoring.DEFAULT_THRESHOLD else ""
        lines.append((f"{threshold}{mark}", *cells))
    return ("### The threshold\n\nThe same queries decided again from the same candidates at other "
            "thresholds on the fused score (a calibrated probability): the share decided right, and "
            "the false matches. (Turned and zoomed views are tried when nothing clears the default "
            "threshold; their candidates are kept as found.)\n\n"
            + table(header, lines))


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

"""`calibrate`: choose a database's threshold from its own genuine and impostor scores.

Genuine scores come from specimens with two or more captures (each capture queried against the
others, itself left out), from logged decisions a person confirmed (and impostor scores from
those they rejected), and, where those are too few, from simulated re-captures of enrolled
images. Impostor scores are each such query's best other specimen (a false match is made per
query, by the best of its shortlist). The threshold is the lowest that keeps the impostor share
at or under the target false-match rate (never under the shipped default when there are too
few impostor scores to see that rate), and it is stored for this model_id and score kind only.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from .. import images, local_features
from ..config import setting
from ..errors import DatabaseUnusable, SpecimenIdError
from ..models import embedder_for
from ..models.preprocess import to_rgb8
from ..progress import progress_bar
from ..simulate import Recapture
from ..store import write_atomic
from .query import rank
from .score import DEFAULT_THRESHOLD, SCORE_KIND, shows_field


def reviewed_pairs(review: dict) -> tuple[list[float], list[float]]:
    """A person's answer to a logged query (store: `reviewed`) as genuine and impostor scores.
    The specimen they named is the query's field: its score is genuine (0 when it was not
    among the candidates: the search missed it), and every other candidate that showed a
    field is an impostor; "none of these" makes each of them an impostor. The older verdicts
    speak only of a decided match: confirmed, its score is genuine; rejected, an impostor's."""
    if review["verdict"] in ("confirmed", "rejected"):
        if review["decision"] != "match":
            return [], []
        return ([review["score"]], []) if review["verdict"] == "confirmed" else ([], [review["score"]])
    if review["verdict"] == "specimen" and review["named"] is None:
        return [], []  # the specimen it named was purged since: nothing to pair it with
    shown = [c for c in review["candidates"] if shows_field(c)]
    if review.get("capture"):
        # "this one": that candidate (or, merged away since, the one of the specimen holding its
        # capture now) is genuine; a candidate is an impostor when its capture is held by
        # another specimen now, or by none
        genuine = next((c for c in review["candidates"] if c["capture"] == review["capture"]), None) or next(
            (c for c in review["candidates"] if c.get("holder") == review["named"]), None)
        impostor = [c["score"] for c in shown if c is not genuine and c.get("holder") != review["named"]]
        return [genuine["score"] if genuine else 0.0], impostor
    impostor = [c["score"] for c in shown if c["specimen"] != review["named"]]
    if review["verdict"] == "none":
        return [], impostor
    return [next((c["score"] for c in shown if c["specimen"] == review["named"]), 0.0)], impostor


def calibrate(db, fmr: float = 0.001, min_genuine: int = 200, out_dir: Path | None = None,
              seed: int = 0, progress: bool = False) -> dict:
    out_dir = Path(out_dir) if out_dir else default_report_dir(db)
    embedder = embedder_for(db)
    files = [(cid, db.blobs.file(key)) for cid, key in db.capture_images()]
    owners = db.capture_owners([cid for cid, _ in files])
    files = [(cid, path) for cid, path in files if cid in owners]  # removed specimens left out
    counts: dict[str, int] = {}
    for owner in owners.values():
        counts[owner["specimen"]] = counts.get(owner["specimen"], 0) + 1
    if len(counts) < 2:
        raise DatabaseUnusable("calibration needs at least two enrolled specimens")
    genuine, impostor = [], []
    sources = {"repeat captures": 0, "reviewed queries": 0, "simulated re-captures": 0}
    for review in db.reviewed(SCORE_KIND):
        found, others = reviewed_pairs(review)
        genuine += found
        impostor += [max(others)] if others else []  # one per query, as below
        sources["reviewed queries"] += bool(found or others)
    rng = np.random.default_rng(seed)
    repeats = [(cid, path) for cid, path in files if counts[owners[cid]["specimen"]] > 1]
    simulate = max(0, min_genuine - len(repeats) - len(genuine))
    simulated = [files[i] for i in np.resize(rng.permutation(len(files)), simulate)]
    top_k = min(len(counts), 20)

    def score(pixels, truth: str, exclude: set[int]) -> None:
        vector = embedder.embed([pixels])[0]
        candidates = rank(db, vector, local_features.extract(pixels), top_k,
                          int(setting(db, "shortlist")), exclude=exclude)[:top_k]
        genuine.append(next((c["score"] for c in candidates if c["specimen"] == truth), 0.0))
        # the query's best other field: a false match is made per query, by the best of its
        # shortlist. A neighbouring field that shares part of the view verifies as one scene: it
        # is reported as an overlap, never matched, so it is no impostor either.
        impostor.append(max((c["score"] for c in candidates if c["specimen"] != truth and shows_field(c)),
                            default=0.0))

    with progress_bar(len(repeats) + len(simulated), "calibrate", progress) as bar:
        for cid, path in repeats:
            score(images.stored_pixels(path), owners[cid]["specimen"], {cid})
            sources["repeat captures"] += 1
            bar.update(1)
        for cid, path in simulated:
            rgb = to_rgb8(images.stored_pixels(path))
            recapture = images.decode(Recapture().jpeg_bytes(rgb, rng), str(path)).pixels
            score(recapture, owners[cid]["specimen"], set())
            sources["simulated re-captures"] += 1
            bar.update(1)

    genuine, impostor = np.array(genuine), np.array(impostor)
    if not len(impostor):  # (reviews alone met --min-genuine, and none showed another specimen)
        raise DatabaseUnusable("calibration found no query to score another specimen in: raise "
                               "--min-genuine so that enrolled captures are queried too")
    threshold = threshold_for_fmr(impostor, fmr)
    if 1 / len(impostor) > fmr:
        # Too few impostors to see that rate: never go below the default, which was chosen on
        # far more comparisons (bench/accuracy.py).
        threshold = max(threshold, DEFAULT_THRESHOLD)
    summary = {
        "model_id": db.model_id, "score_kind": SCORE_KIND, "target_fmr": fmr,
        "threshold": threshold, "genuine": len(genuine), "impostor": len(impostor),
        "sources": sources, "tar": float(np.mean(genuine >= threshold)),
        "fmr": float(np.mean(impostor >= threshold)),
        "resolvable_fmr": 1 / len(impostor),
    }
    db.set_threshold(threshold, SCORE_KIND, model_id=db.model_id, fmr=fmr,
                     calibration={k: v for k, v in summary.items() if k != "score_kind"})
    write_report(out_dir, summary, genuine, impostor)
    summary["report"] = str(out_dir / "calibration.md")
    return summary


def default_report_dir(db) -> Path:
    """DB/calibration for a database directory; a server's database has no folder to offer."""
    if not isinstance(db.location, Path):
        raise SpecimenIdError(f"{db.where} keeps no folder for the calibration report: give --out FOLDER")
    return db.location / "calibration"


def threshold_for_fmr(impostor: np.ndarray, fmr: float) -> float:
    """Lowest threshold with share(impostor >= t) <= fmr. With too few impostor scores to see
    that rate, it lands just above the highest one (the report says so)."""
    ranked = np.sort(impostor)[::-1]
    allowed = int(np.floor(fmr * len(ranked)))  # impostors that may sit at or above t
    t = ranked[allowed] if allowed < len(ranked) else ranked[-1]
    return float(np.nextafter(t, np.inf))


def write_report(out_dir: Path, summary: dict, genuine: np.ndarray, impostor: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, (hist, det) = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(0, 1, 41)
    hist.hist(impostor, bins, alpha=0.6, label=f"impostor ({len(impostor)})", color="tab:red")
    hist.hist(genuine, bins, alpha=0.6, label=f"genuine ({len(genuine)})", color="tab:green")
    hist.axvline(summary["threshold"], color="black", linestyle="--", label="threshold")
    hist.set(xlabel="fused score", ylabel="count", yscale="log", title="Score distributions")
    hist.legend()
    grid = np.unique(np.concatenate([genuine, impostor, [0.0, 1.0]]))
    fmr = np.array([np.mean(impostor >= t) for t in grid])
    fnmr = np.array([np.mean(genuine < t) for t in grid])
    floor = 0.5 / max(len(impostor), len(genuine))
    det.loglog(np.maximum(fmr, floor), np.maximum(fnmr, floor), color="tab:blue")
    det.axvline(summary["target_fmr"], color="black", linestyle="--", label="target FMR")
    det.set(xlabel="false match rate", ylabel="false non-match rate", title="DET curve")
    det.legend()
    fig.tight_layout()
    # every report file whole or absent, even if the process is killed while writing it
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    write_atomic(out_dir / "calibration.png", png.getvalue())
    write_atomic(out_dir / "calibration.json", json.dumps(summary, indent=2).encode())
    lines = [
        "# Calibration", "",
        f"- model: `{summary['model_id']}`, score kind `{summary['score_kind']}`",
        f"- genuine scores: {summary['genuine']} ({', '.join(f'{v} {k}' for k, v in summary['sources'].items())})",
        f"- impostor scores: {summary['impostor']}",
        f"- target false-match rate: {summary['target_fmr']:g}; threshold chosen: {summary['threshold']:.4f}",
        f"- at that threshold: TAR {summary['tar']:.3f}, FMR {summary['fmr']:.4f}",
    ]
    if summary["resolvable_fmr"] > summary["target_fmr"]:
        lines.append(f"- warning: {summary['impostor']} impostor scores cannot resolve an FMR under "
                     f"{summary['resolvable_fmr']:.4f}; the threshold is the larger of the highest "
                     "impostor score and the shipped default. Enrol more specimens, or repeat "
                     "captures, and calibrate again.")
    lines += ["", "![score distributions and DET curve](calibration.png)", ""]
    write_atomic(out_dir / "calibration.md", "\n".join(lines).encode())

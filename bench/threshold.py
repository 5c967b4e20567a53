"""Where should the default threshold on cosine similarity sit? Measured on the 664 real
DSB 2018 fields in ../shared/data/dsb2018: each field is enrolled from one simulated capture
and queried with another (src/specimen_id/simulate.py, fixed seed). For each threshold it
reports the share of genuine queries that match (TAR) and the share of queries whose best
*wrong* specimen would clear it (false-match rate, FMR), the error that a threshold guards.

    python bench/threshold.py [--data ../shared/data/dsb2018] [--limit N]
"""

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results import table, write_section  # noqa: E402

from specimen_id import images  # noqa: E402
from specimen_id.models import load_embedder  # noqa: E402
from specimen_id.simulate import Recapture  # noqa: E402
from specimen_id.store import DEFAULT_THRESHOLD  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "dsb2018")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N fields")
    args = parser.parse_args()
    files = sorted(args.data.glob("*.png"))[: args.limit or None]
    rng = np.random.default_rng(2018)
    sim = Recapture()
    embedder = load_embedder()
    enrolled, queried, originals = [], [], []
    for i, path in enumerate(files):
        rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        a = images.decode(sim.jpeg_bytes(rgb, rng), "a").pixels
        b = images.decode(sim.jpeg_bytes(rgb, rng), "b").pixels
        vectors = embedder.embed([a, b, rgb])
        enrolled.append(vectors[0]), queried.append(vectors[1]), originals.append(vectors[2])
        if i % 100 == 0:
            print(f"{i}/{len(files)} fields", file=sys.stderr)
    enrolled, queried, originals = map(np.array, (enrolled, queried, originals))
    sims = queried @ enrolled.T
    genuine = np.diag(sims).copy()
    # Near-copies in the set (e.g. two thumbnails of one embryo) are the same field, not
    # impostors: pairs whose *original* images are this alike are left out.
    same_field = (originals @ originals.T) >= 0.97
    impostor = np.where(same_field, -1.0, sims)
    best_wrong = impostor.max(axis=1)
    top1 = float(np.mean(genuine > best_wrong))
    rows = []
    for t in np.arange(0.60, 0.96, 0.05):
        rows.append((f"{t:.2f}" + (" (default)" if abs(t - DEFAULT_THRESHOLD) < 1e-6 else ""),
                     f"{np.mean(genuine >= t):.3f}", f"{np.mean(best_wrong >= t):.3f}",
                     f"{np.mean(impostor[impostor > -1] >= t):.4f}"))
    near = int((same_field.sum() - len(files)) / 2)
    body = (
        "## Default threshold on cosine similarity (bench/threshold.py)\n\n"
        f"{len(files)} DSB 2018 fields, each enrolled from one simulated capture and queried with "
        f"another (seed 2018; {sim.describe()}). {near} near-copy pairs (original cosine >= 0.97) "
        "are not counted as impostors. Top-1 identification among all fields: "
        f"{top1:.3f}. Genuine cosine: 1st percentile {np.percentile(genuine, 1):.3f}, median "
        f"{np.median(genuine):.3f}. Best wrong specimen per query: median "
        f"{np.median(best_wrong):.3f}, 99th percentile {np.percentile(best_wrong, 99):.3f}.\n\n"
        + table(("threshold", "TAR (genuine >= t)", "FMR per query (best wrong >= t)",
                 "FMR per pair"), rows))
    print(body)
    write_section("threshold", body)


if __name__ == "__main__":
    main()

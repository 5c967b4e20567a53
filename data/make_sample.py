"""Regenerate the demo and test sample in data/ from the CC0 DSB 2018 images (see README.md
here). Run from the repository root: python data/make_sample.py ../shared/data/dsb2018"""

import sys
from pathlib import Path

import cv2
import numpy as np

from specimen_id.simulate import Recapture

# name -> DSB 2018 stage-1 image id (prefix); chosen to span the set's kinds of field
SPECIMENS = {
    "fluo-nuclei-a": "2abc40c118bc", "fluo-nuclei-b": "56d0da5b663d",
    "fluo-nuclei-c": "00071198d059", "brightfield-a": "af6b6173c594",
    "he-tissue-a": "00ae65c1c663", "he-tissue-b": "6b0ac2ab04c0",
}
NEVER_ENROLLED = {"never-enrolled-1": "d910b2b1be84", "never-enrolled-2": "ebc18868864a"}
SECOND_CAPTURE = ("fluo-nuclei-a", "he-tissue-a")  # specimens enrolled from two captures
# Sparse fluorescence fields (two to six nuclei each, all alike): SIFT pairs too few keypoints
# here, so they test the aligned correlation (local_features). From bench/accuracy.py's misses
# before it had that evidence.
SPARSE = {"sparse-a": "94a5a37c3b11", "sparse-b": "a815a986800a", "sparse-c": "c6de542205b8",
          "sparse-d": "866a8cba7bfe", "sparse-e": "ec486143ecfe", "sparse-f": "be1916d0e559"}


def main(source: Path, out: Path = Path(__file__).parent) -> None:
    rng = np.random.default_rng(2018)
    sim = Recapture()

    def field(prefix):
        (path,) = source.glob(f"{prefix}*.png")
        return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    for name, prefix in SPECIMENS.items():
        rgb = field(prefix)
        folder = out / "specimens" / name
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / "capture-1.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if name in SECOND_CAPTURE:
            second = cv2.cvtColor(sim.apply(rgb, rng), cv2.COLOR_RGB2BGR)
            cv2.imwrite(str(folder / "capture-2.png"), second)
        (out / "queries").mkdir(exist_ok=True)
        (out / "queries" / f"recapture-{name}.jpg").write_bytes(sim.jpeg_bytes(rgb, rng))
    for name, prefix in NEVER_ENROLLED.items():
        (out / "queries" / f"{name}.jpg").write_bytes(sim.jpeg_bytes(field(prefix), rng))
    rng = np.random.default_rng(2019)  # its own draws: the set above stays as it was
    (out / "sparse").mkdir(exist_ok=True)
    for name, prefix in SPARSE.items():
        rgb = field(prefix)  # two captures at one magnification, as at a microscope
        (out / "sparse" / f"{name}.jpg").write_bytes(sim.jpeg_bytes(rgb, rng))
        (out / "sparse" / f"recapture-{name}.jpg").write_bytes(sim.jpeg_bytes(rgb, rng))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

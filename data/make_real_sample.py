"""Copy the few real re-captures the tests use from ../shared/data/real into data/real (see
README.md here for where they come from). Run from the repository root:

    python data/make_real_sample.py ../shared/data/real

The confocal tiles are halved (1024 -> 512 px, both captures of a pair alike) to keep the
repository light; the fluorescence frames are copied as they are (16-bit)."""

import shutil
import sys
from pathlib import Path

import cv2

# name here -> file in the set (gallery/<specimen>/<n>.png or queries/<file>.png)
DEFOCUS = {  # dfnn_defocus (MIT): one cell, in focus and 0.7 um below
    "cell2-in-focus.png": "gallery/cell2/1.png",
    "cell2-defocus-0.7um.png": "queries/mitochondria_cell2G2Dz0p3umOffM0p7um.png",
}
CONFOCAL = {  # distortion_lscm (CC0): tiles of a strained metal specimen, re-imaged after re-mounting
    "tile-a07.png": "gallery/tensile_A07/1.png",
    "tile-a06.png": "gallery/tensile_A06/1.png",
    "tile-a07-remounted.png": "queries/tensile_state2_A07.png",
    "tile-a07-shifted-right.png": "queries/tensile_state1_A07_right.png",
}


def main(source: Path, out: Path = Path(__file__).parent / "real") -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, path in DEFOCUS.items():
        shutil.copyfile(source / "dfnn_defocus" / path, out / name)
    for name, path in CONFOCAL.items():
        tile = cv2.imread(str(source / "distortion_lscm" / path), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(out / name), cv2.resize(tile, (512, 512), interpolation=cv2.INTER_AREA))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

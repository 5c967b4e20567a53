"""Regenerate the fields int8 quantization calibrates on (src/specimen_id/models/int8_fields/)
from the CC0 DSB 2018 images. Run from the repository root:
python data/make_int8_fields.py ../shared/data/dsb2018"""

import sys
from pathlib import Path

import cv2
import numpy as np

from make_sample import NEVER_ENROLLED, SPECIMENS

COUNT = 48  # NNCF's statistics settle well before this; two inputs are made from each field
SIDE = 256  # the network sees 224 px; a little more leaves room for simulated re-captures


def main(source: Path, out: Path = Path(__file__).parent.parent / "src/specimen_id/models/int8_fields"):
    sample = set(SPECIMENS.values()) | set(NEVER_ENROLLED.values())
    files = [f for f in sorted(source.glob("*.png")) if f.name[:12] not in sample]
    chosen = np.random.default_rng(8).choice(len(files), COUNT, replace=False)
    out.mkdir(parents=True, exist_ok=True)
    for f in (files[i] for i in sorted(chosen)):
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        scale = SIDE / max(bgr.shape[:2])
        bgr = cv2.resize(bgr, (round(bgr.shape[1] * scale), round(bgr.shape[0] * scale)),
                         interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(out / f"{f.name[:12]}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])


if __name__ == "__main__":
    main(Path(sys.argv[1]))

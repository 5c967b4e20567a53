"""Make the quality gate's examples in data/quality from the sample fields in data/specimens
and one DSB 2018 brightfield field (see README.md here). Run from the repository root:

    python data/make_quality_sample.py ../shared/data/dsb2018

- brightfield-white-background.png: DSB 2018 brightfield field 08275a5b1c2d, halved to 512 px
  and exposed longer, so that its background (its most common brightness) just reaches white;
  the cells keep their detail. Should pass.
- brightfield-over-exposed.png: the same field exposed 1.3 times longer again: the background
  is clipped solid, and the pale parts of the cells with it. Should be refused as over-exposed.
- small-object.png: a 60x56 crop around one nucleus of fluo-nuclei-b, sharp. Should pass.
- blurred-field.png: he-tissue-b blurred by a Gaussian of sigma 1.5% of its longer side.
  Should be refused as out of focus.
- clipped-specimen.png: fluo-nuclei-a at a gain that saturates the brighter half of its nuclei.
  Should be refused as over-exposed."""

import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).parent


def load(name):
    return cv2.imread(str(HERE / "specimens" / name / "capture-1.png"), cv2.IMREAD_COLOR)


def gained(bgr, gain):
    return np.clip(bgr.astype(np.float32) * gain, 0, 255).astype(np.uint8)


BRIGHTFIELD = "08275a5b1c2d"  # DSB 2018 image id (prefix)


def main(dsb: Path, out: Path = HERE / "quality") -> None:
    out.mkdir(exist_ok=True)
    bright = cv2.imread(str(next(dsb.glob(f"{BRIGHTFIELD}*.png"))), cv2.IMREAD_COLOR)
    bright = cv2.resize(bright, (bright.shape[1] // 2, bright.shape[0] // 2), interpolation=cv2.INTER_AREA)
    counts, edges = np.histogram(bright.max(axis=2), bins=256, range=(0, 256))
    white = 255 / edges[counts.argmax() + 1]
    cv2.imwrite(str(out / "brightfield-white-background.png"), gained(bright, white))
    cv2.imwrite(str(out / "brightfield-over-exposed.png"), gained(bright, 1.3 * white))
    nuclei = load("fluo-nuclei-b")
    y, x = np.unravel_index(cv2.GaussianBlur(nuclei.max(axis=2), (0, 0), 6).argmax(), nuclei.shape[:2])
    y, x = min(max(y - 28, 0), nuclei.shape[0] - 56), min(max(x - 30, 0), nuclei.shape[1] - 60)
    cv2.imwrite(str(out / "small-object.png"), nuclei[y:y + 56, x:x + 60])
    tissue = load("he-tissue-b")
    cv2.imwrite(str(out / "blurred-field.png"), cv2.GaussianBlur(tissue, (0, 0), 0.015 * max(tissue.shape[:2])))
    fluo = load("fluo-nuclei-a")
    grey = fluo.max(axis=2).astype(np.float32)
    nucleus = grey > cv2.threshold(grey.astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0]
    cv2.imwrite(str(out / "clipped-specimen.png"), gained(fluo, 255 / np.median(grey[nucleus])))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

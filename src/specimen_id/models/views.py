"""Other views of a query for the shortlist: the same capture turned and zoomed.

The CNN's vector is not invariant to rotation or magnification: a slide put back turned, or
the zoom wheel moved, can push the right field far down the FAISS ranking, though
verification (SIFT, any rotation, up to 2x) would recognise it. So when the plain query finds
no field it shows, the query is searched again as these views: turned by quarter turns; its
centre enlarged (the query taken further out than the enrolled field); and shrunk inside a
mirrored border (the query taken closer in: the enrolled field is then the larger view).
Turns in between cost more than they find: the CNN's vector of a field turned by less than
45 degrees stays near enough for the plain shortlist (bench/speed.py at 100k entries).
Only the index is searched with them; verification always uses the capture as it is (SIFT
and the transform it fits need no help with rotation or zoom). Laying the thumbnails over each
other turned and zoomed as well was tried: sparse fields then found blob-on-blob alignments
with other fields (false matches on bench/accuracy.py) for little gain."""

from __future__ import annotations

import numpy as np

TURNS = (90, 180, 270)  # degrees, clockwise
ZOOMS = (2 / 3, 1 / 2, 3 / 2, 2)  # < 1: the centre enlarged; > 1: shrunk inside a mirrored border


def views(pixels: np.ndarray) -> list[np.ndarray]:
    """The query turned and zoomed, as decoded captures the embedder takes."""
    return ([_turned(pixels, degrees) for degrees in TURNS]
            + [_centre(pixels, zoom) if zoom < 1 else _framed(pixels, zoom) for zoom in ZOOMS])


def _turned(pixels: np.ndarray, degrees: int) -> np.ndarray:
    import cv2

    if degrees % 90 == 0:
        return np.ascontiguousarray(np.rot90(pixels, -degrees // 90))
    h, w = pixels.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), -degrees, 1.0)
    return cv2.warpAffine(pixels, m, (w, h), borderMode=cv2.BORDER_REFLECT)  # no black corners


def _centre(pixels: np.ndarray, share: float) -> np.ndarray:
    import cv2

    h, w = pixels.shape[:2]
    ch, cw = max(1, int(h * share)), max(1, int(w * share))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return cv2.resize(pixels[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_CUBIC)


def _framed(pixels: np.ndarray, factor: float) -> np.ndarray:
    import cv2

    h, w = pixels.shape[:2]
    ph, pw = int(h * (factor - 1) / 2), int(w * (factor - 1) / 2)
    framed = cv2.copyMakeBorder(pixels, ph, ph, pw, pw, cv2.BORDER_REFLECT)
    return cv2.resize(framed, (w, h), interpolation=cv2.INTER_AREA)

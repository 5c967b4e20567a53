"""Small renditions of managed images for pages: thumbnails and a page-size view, made once per
image content and size and kept under renditions/ beside images/, so a page never decodes a
whole capture again.

They are derived: `export` leaves them out (it copies only images rows refer to), `purge`
deletes them with their image, `verify` names damaged or orphaned ones and `repair` rebuilds or
removes them; a missing one is made on first request."""

from __future__ import annotations

import threading
from pathlib import Path

SIZES = (256, 512, 1600)  # the longer side: a card, a side-by-side view, a page
JPEG_QUALITY = 90
FOLDER = "renditions"

# One full decode at a time: however many pages ask for a new image at once, a server holds
# one decoded capture (images.load bounds that) for renditions, not one per request.
_BUILDING = threading.Lock()


def fitting(size: int) -> int:
    """The smallest rendition at least `size` wide (the largest for 0 or more than it holds)."""
    return next((s for s in SIZES if s >= size > 0), SIZES[-1])


def rendition_path(root: Path, image: Path, size: int) -> Path:
    """Where the rendition of a managed image (images/ab/<sha256>.ext) at one of SIZES lives."""
    sha = image.stem
    return Path(root) / FOLDER / sha[:2] / f"{sha}-{size}.jpg"


def rendition(root: Path, image: Path, size: int, rgb8) -> Path:
    """The rendition file of a managed image that fits `size`, made (every size, from one
    `rgb8(image)`, the caller's decode to 8-bit RGB) when it is missing; whatever that decode
    raises for an unreadable image goes up."""
    path = rendition_path(root, image, fitting(size))
    if not sound(path):  # missing, or cut short
        with _BUILDING:
            if not sound(path):  # another request may have made it meanwhile
                build(root, image, rgb8(image))
    return path


def build(root: Path, image: Path, rgb) -> None:
    import cv2

    from .files import write_atomic

    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    for size in sorted(SIZES, reverse=True):  # each from the one above: less work, same look
        scale = size / max(bgr.shape[:2])
        if scale < 1:
            bgr = cv2.resize(bgr, (max(1, round(bgr.shape[1] * scale)), max(1, round(bgr.shape[0] * scale))),
                             interpolation=cv2.INTER_AREA)
        jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]
        write_atomic(rendition_path(root, image, size), jpeg.tobytes())


def delete(root: Path, image: Path) -> None:
    for size in SIZES:
        rendition_path(root, image, size).unlink(missing_ok=True)


def source_sha(path: Path) -> str | None:
    """The image content a rendition file was made from, None for a file of another name."""
    sha, _, size = path.stem.rpartition("-")
    return sha if path.suffix == ".jpg" and size.isdigit() and int(size) in SIZES and len(sha) == 64 else None


def sound(path: Path) -> bool:
    """A whole JPEG: starts with SOI and ends with EOI (a cut write or a zeroed block does not)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(-2, 2)
            return head == b"\xff\xd8" and f.read(2) == b"\xff\xd9"
    except OSError:
        return False

"""Decoding captures by content, with the hashes and facts that identify them.

Pillow reads the header (format by magic bytes, size, EXIF) without decoding, so oversized
images are refused before any pixel memory is spent. OpenCV decodes the pixels because it keeps
16-bit colour and alpha exactly (Pillow drops 16-bit RGB to 8 bits) and refuses truncated files.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import DamagedImage, ImageTooLarge, NotAnImage

# Pillow's names for the formats we accept ("PPM" covers the whole PNM family).
FORMATS = {"JPEG": "jpg", "PNG": "png", "TIFF": "tif", "BMP": "bmp", "WEBP": "webp",
           "GIF": "gif", "PPM": "pnm"}
# 100 megapixels: far above any microscope camera, far below what would exhaust memory.
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "SPECIMEN_ID_MAX_PIXELS"

# PNG text chunk in which `specimen-id capture` records how the capture was taken (JSON)
ACQUISITION_KEY = "specimen-id:acquisition"

_EXIF_ORIENTATION, _EXIF_DATETIME, _EXIF_MAKE, _EXIF_MODEL = 0x0112, 0x0132, 0x010F, 0x0110


@dataclass(frozen=True)
class Capture:
    """One decoded image file: RGB(A) or grey pixels in their own dtype, after EXIF orientation."""

    name: str
    data: bytes = field(repr=False)
    pixels: np.ndarray = field(repr=False)
    format: str
    file_sha256: str
    pixel_sha256: str
    exif: dict
    acquisition: dict | None = None  # device, controls, frames: from `specimen-id capture`

    @cached_property
    def quality(self) -> dict:
        """Focus, clipping and size (see quality.py), measured once."""
        from .quality import measure

        return measure(self.pixels)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return 1 if self.pixels.ndim == 2 else int(self.pixels.shape[2])

    @property
    def extension(self) -> str:
        return FORMATS[self.format]


def visible_files(folder) -> list[Path]:
    """Files under a folder, hidden ones (a name or a parent folder starting with ".") left
    out: cameras, apps and file managers keep temp files and thumbnails there."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*")
                  if not any(part.startswith(".") for part in p.relative_to(folder).parts) and p.is_file())


def max_pixels() -> int:
    return int(os.environ.get(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS))


def load(path: str | os.PathLike) -> Capture:
    """Read and decode one file; raises an ImageRefused subclass naming the file."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise NotAnImage(path, "is a directory, not an image file") from None
    except OSError as e:
        raise NotAnImage(path, f"cannot be read ({e.strerror or e})") from None
    return decode(data, str(path))


def decode(data: bytes, name: str) -> Capture:
    # Pillow warns (on stderr) about odd EXIF in damaged files; the refusal or the decoded
    # pixels are what a user is told.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _decode(data, name)


def _decode(data: bytes, name: str) -> Capture:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as header:
            fmt, (width, height) = header.format, header.size
            exif = header.getexif()
            text = dict(getattr(header, "text", None) or {})
    except Image.DecompressionBombError:
        raise ImageTooLarge(name, f"is too large to decode safely (over {max_pixels():,} pixels)") from None
    except Exception:
        raise NotAnImage(name, "is not an image (no known image format in its content)") from None
    if fmt not in FORMATS:
        raise NotAnImage(name, f"is a {fmt} image; accepted: {', '.join(sorted(FORMATS))}")
    if width * height > max_pixels():
        raise ImageTooLarge(name, f"is {width}x{height} = {width * height:,} pixels, over the "
                                  f"limit of {max_pixels():,} (set {MAX_PIXELS_ENV} to change it)")
    pixels = _decode_pixels(data, name, fmt)
    orientation = int(exif.get(_EXIF_ORIENTATION, 1) or 1)
    pixels = np.ascontiguousarray(_orient(pixels, orientation))
    facts = {"orientation": orientation}
    for key, tag in (("datetime", _EXIF_DATETIME), ("make", _EXIF_MAKE), ("model", _EXIF_MODEL)):
        if isinstance(exif.get(tag), str):
            facts[key] = exif[tag].strip("\x00 ")
    return Capture(name=name, data=data, pixels=pixels, format=fmt,
                   file_sha256=hashlib.sha256(data).hexdigest(),
                   pixel_sha256=pixel_sha256(pixels), exif=facts,
                   acquisition=_acquisition(text.get(ACQUISITION_KEY)))


def _acquisition(text: str | None) -> dict | None:
    """The capture settings a PNG carries, if any (a malformed record is ignored, not fatal)."""
    import json

    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    # anyone can write a PNG text chunk: keep plain values, lists of text and flat mappings,
    # and `not_locked` only as the list of names the pages show
    plain = (str, int, float, bool, type(None))
    kept = {str(k): v for k, v in value.items()
            if isinstance(v, plain) or (isinstance(v, list) and all(isinstance(x, str) for x in v))
            or (isinstance(v, dict) and all(isinstance(x, plain) for x in v.values()))}
    if not isinstance(kept.get("not_locked", []), list):
        del kept["not_locked"]
    return kept


def _decode_pixels(data: bytes, name: str, fmt: str) -> np.ndarray:
    import cv2

    # OpenCV's decoders print their own complaints ("libpng error: ...") to stderr; the
    # refusal below is the one line a user gets.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.size == 0:
        raise DamagedImage(name, f"cannot be decoded: truncated or corrupt {fmt} file")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 3:  # OpenCV's BGR(A) to the RGB(A) everyone else uses
        code = cv2.COLOR_BGRA2RGBA if pixels.shape[2] == 4 else cv2.COLOR_BGR2RGB
        pixels = cv2.cvtColor(pixels, code)
    return pixels


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation (OpenCV ignores it when reading unchanged pixels)."""
    transposed = pixels.swapaxes(0, 1)
    return {
        2: pixels[:, ::-1], 3: pixels[::-1, ::-1], 4: pixels[::-1],
        5: transposed, 6: transposed[:, ::-1], 7: transposed[::-1, ::-1], 8: transposed[::-1],
    }.get(orientation, pixels)


def pixel_sha256(pixels: np.ndarray) -> str:
    """Hash of the decoded pixels with their shape and dtype: same pixels, same hash, whatever
    the file's metadata or container says."""
    h = hashlib.sha256(f"{pixels.shape}|{pixels.dtype.str}|".encode())
    h.update(np.ascontiguousarray(pixels).data)
    return h.hexdigest()

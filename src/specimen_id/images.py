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

from .errors import DamagedImage, ImageRefused, ImageTooLarge, NotAnImage

# Pillow's names for the formats we accept ("PPM" covers the whole PNM family).
FORMATS = {"JPEG": "jpg", "PNG": "png", "TIFF": "tif", "BMP": "bmp", "WEBP": "webp",
           "GIF": "gif", "PPM": "pnm"}
# 100 megapixels: far above any microscope camera, far below what would exhaust memory.
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "SPECIMEN_ID_MAX_PIXELS"
# What the decoded pixels may take (width x height x channels x bytes per sample), checked from
# the header: a small file can declare gigabytes of 16-bit RGBA. Decoding is the only step that
# holds a whole file's pixels, so this bounds a capture's memory; 1 GiB lets a web server on a
# 24 GB machine decode several uploads at once.
DEFAULT_MAX_DECODED_MB = 1024
MAX_DECODED_ENV = "SPECIMEN_ID_MAX_DECODED_MB"
# Every step after decoding (quality, CNN input and its turned/zoomed views, local features,
# pages) needs far fewer pixels than this long side, so a larger capture is shrunk once, here.
WORK_SIDE = 2048
# Float captures may mark missing samples as NaN or infinite: a few are filled in, more make
# the capture unusable (every such capture looks the same to the CNN).
MAX_NON_FINITE = 0.01
STRIP_ROWS = 256  # rows hashed or filled at a time, so that no full-size copy is made

# PNG text chunk in which `specimen-id capture` records how the capture was taken (JSON)
ACQUISITION_KEY = "specimen-id:acquisition"

_EXIF_ORIENTATION, _EXIF_DATETIME, _EXIF_MAKE, _EXIF_MODEL = 0x0112, 0x0132, 0x010F, 0x0110


@dataclass(frozen=True)
class Capture:
    """One decoded image file. `pixels` are RGB(A) or grey in the file's own dtype, after EXIF
    orientation, shrunk to WORK_SIDE when larger; width, height, channels and dtype are the
    file's own, and the pixel hash is over all of its pixels."""

    name: str
    data: bytes = field(repr=False)
    pixels: np.ndarray = field(repr=False)
    format: str
    file_sha256: str
    pixel_sha256: str
    exif: dict
    width: int
    height: int
    channels: int
    dtype: str
    acquisition: dict | None = None  # device, controls, frames: from `specimen-id capture`
    non_finite: float = 0.0  # share of pixel values that were NaN or infinite, filled in
    warnings: tuple = ()  # what a user should know about the file, though it was read

    @cached_property
    def quality(self) -> dict:
        """Focus, clipping and size (see quality.py), measured once; `non_finite` is kept with
        them when some pixel values had to be filled in."""
        from .quality import measure

        measures = measure(self.pixels, (self.width, self.height))
        return {**measures, "non_finite": self.non_finite} if self.non_finite else measures

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


def max_decoded_bytes() -> int:
    return int(float(os.environ.get(MAX_DECODED_ENV, DEFAULT_MAX_DECODED_MB)) * 2**20)


def load(path: str | os.PathLike) -> Capture:
    """Read and decode one file; raises an ImageRefused subclass naming the file."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise NotAnImage(path, "is a directory, not an image file") from None
    except OSError as e:
        raise NotAnImage(path, f"cannot be read ({e.strerror or e})") from None
    return decode(data, str(path))


def rgb8(path: str | os.PathLike) -> np.ndarray:
    """An image file as 8-bit RGB (what thumbnails are made from)."""
    from .models.preprocess import to_rgb8

    return to_rgb8(load(path).pixels)


def stored_pixels(path: str | os.PathLike) -> np.ndarray:
    """Decoded pixels of an image the database keeps: a missing or unreadable one is damage."""
    from .errors import DatabaseDamaged

    try:
        return load(path).pixels
    except ImageRefused as e:
        raise DatabaseDamaged(f"managed image {e}; nothing was changed (restore the file "
                              "or remove its specimen)") from None


# catch_warnings is not thread-safe: the pipelines decode on several threads, and one thread
# leaving it restores the filters under another, whose Pillow warning then reaches stderr. So
# Pillow's warnings are silenced for the process, once.
warnings.filterwarnings("ignore", module=r"PIL(\.|$)")


def decode(data: bytes, name: str) -> Capture:
    """Decode one file's content; raises an ImageRefused subclass naming it, whatever is wrong
    inside (a batch goes on without the file)."""
    # Pillow warns (on stderr) about odd EXIF in damaged files; the refusal or the decoded
    # pixels are what a user is told (and see the filter above).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _decode(data, name)
        except ImageRefused:
            raise
        except MemoryError:
            raise ImageTooLarge(name, "needs more memory to decode than this machine has free; "
                                      f"lower {MAX_DECODED_ENV} or shrink the image") from None
        except Exception as e:  # a decoder or metadata parser met something it could not handle
            raise DamagedImage(name, f"cannot be decoded ({type(e).__name__} while reading it): the "
                                     "file may be damaged; re-save it as PNG or TIFF") from None


def _decode(data: bytes, name: str) -> Capture:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as header:
            fmt, (width, height), mode = header.format, header.size, header.mode
            decoded = _decoded_bytes(header, data, width, height)
            exif = _exif(header)
            text = _text_chunks(header)
    except Image.DecompressionBombError:
        raise ImageTooLarge(name, f"is too large to decode safely (over {max_pixels():,} pixels)") from None
    except Exception:
        raise NotAnImage(name, "is not an image (no known image format in its content)") from None
    if fmt not in FORMATS:
        raise NotAnImage(name, f"is a {fmt} image; accepted: {', '.join(sorted(FORMATS))}")
    if width * height > max_pixels():
        raise ImageTooLarge(name, f"is {width}x{height} = {width * height:,} pixels, over the "
                                  f"limit of {max_pixels():,} (set {MAX_PIXELS_ENV} to change it)")
    if decoded > max_decoded_bytes():
        raise ImageTooLarge(name, f"would take {decoded / 2**20:,.0f} MB decoded ({width}x{height} {mode}), "
                                  f"over the budget of {max_decoded_bytes() / 2**20:,.0f} MB (shrink it, "
                                  f"or set {MAX_DECODED_ENV} to change the budget)")
    orientation = _orientation(exif, name)
    raw = _decode_pixels(data, name, fmt)  # OpenCV's channel order (BGR) until shrunk
    order = {3: [2, 1, 0], 4: [2, 1, 0, 3]}.get(raw.shape[2]) if raw.ndim == 3 else None
    oriented = _orient(raw, orientation)  # a view: no copy
    digest = pixel_sha256(oriented, order)
    non_finite = _fill_non_finite(raw, name)
    pixels = _rgb(_orient(_shrunk(raw), orientation), order)
    facts = {"orientation": orientation}
    for key, tag in (("datetime", _EXIF_DATETIME), ("make", _EXIF_MAKE), ("model", _EXIF_MODEL)):
        if isinstance(exif.get(tag), str):
            facts[key] = exif[tag].strip("\x00 ")
    acquisition, notes = _acquisition(text.get(ACQUISITION_KEY))
    if non_finite:
        notes.append(f"{non_finite:.2%} of its pixel values were not numbers (NaN or infinite); "
                     "they were filled in with the image's median")
    return Capture(name=name, data=data, pixels=pixels, format=fmt,
                   file_sha256=hashlib.sha256(data).hexdigest(), pixel_sha256=digest, exif=facts,
                   width=int(oriented.shape[1]), height=int(oriented.shape[0]), channels=1 if raw.ndim == 2 else int(raw.shape[2]),
                   dtype=str(raw.dtype), acquisition=acquisition, non_finite=non_finite,
                   warnings=tuple(notes))


def _decoded_bytes(header, data: bytes, width: int, height: int) -> int:
    """What OpenCV's decoding of this file will take, from its header alone (Pillow's mode
    under-states 16-bit colour, which it reads as 8 bits: PNG and TIFF say their own depth)."""
    from PIL import ImageMode

    channels = len(header.getbands())
    channels = 4 if header.mode in ("P", "PA") or channels == 2 else channels  # OpenCV expands these
    depth = int(ImageMode.getmode(header.mode).typestr[-1])
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        depth = max(depth, data[24] // 8)
    tags = getattr(header, "tag_v2", None)
    if tags is not None:  # TIFF: BitsPerSample (258), SamplesPerPixel (277)
        bits = tags.get(258, 8)
        depth = max(depth, -(-max(bits if isinstance(bits, tuple) else (bits,)) // 8))
        channels = max(channels, int(tags.get(277, 1)))
    return width * height * channels * depth


def _exif(header):
    """The file's EXIF without decoding its pixels (Pillow's getexif decodes a whole PNG to
    look for an EXIF chunk after them; `capture` and cameras write it ahead)."""
    from PIL import Image

    if header.format != "PNG":
        return header.getexif()
    exif = Image.Exif()
    if isinstance(header.info.get("exif"), bytes):
        exif.load(header.info["exif"])
    return exif


def _text_chunks(header) -> dict:
    """A PNG's text chunks ahead of its pixels, where `capture` writes them (Pillow's `text`
    would decode the whole image to look for more after them)."""
    return {k: v for k, v in header.info.items() if isinstance(k, str) and isinstance(v, str)}


def _orientation(exif, name: str) -> int:
    """EXIF orientation, 1 when absent; a value that is not a whole number is refused, as the
    pixels' sense is then unknown (other whole numbers than 1-8 are read as upright)."""
    value = exif.get(_EXIF_ORIENTATION, 1)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer() or isinstance(value, (bool, str, bytes)):
        raise DamagedImage(name, f"has an EXIF orientation of {str(value)[:40]!r}, not a number 1-8; "
                                 "remove or correct the tag and try again")
    return int(number)


def _fill_non_finite(pixels: np.ndarray, name: str) -> float:
    """Fill NaN or infinite values in place with the image's median (per channel); returns
    their share, refusing the capture when it is over MAX_NON_FINITE."""
    if pixels.dtype.kind != "f":
        return 0.0
    bad = sum(int(np.count_nonzero(~np.isfinite(strip))) for strip in _strips(pixels))
    if not bad:
        return 0.0
    share = bad / pixels.size
    if share > MAX_NON_FINITE:
        raise DamagedImage(name, f"has {share:.1%} of its pixel values not numbers (NaN or infinite), over "
                                 f"{MAX_NON_FINITE:.0%}; re-export it from the acquisition software")
    step = max(1, int(np.sqrt(pixels.shape[0] * pixels.shape[1] / 1e6)))  # a million samples suffice
    sample = pixels[::step, ::step].astype(np.float64)
    sample[~np.isfinite(sample)] = np.nan
    median = np.nan_to_num(np.nanmedian(sample.reshape(-1, *pixels.shape[2:]), axis=0))
    for strip in _strips(pixels):
        np.copyto(strip, median.astype(pixels.dtype), where=~np.isfinite(strip))
    return share


def _strips(pixels: np.ndarray):
    return (pixels[i:i + STRIP_ROWS] for i in range(0, pixels.shape[0], STRIP_ROWS))


def _shrunk(pixels: np.ndarray) -> np.ndarray:
    """The pixels at WORK_SIDE at most, in their own dtype where OpenCV can resize it."""
    import cv2

    h, w = pixels.shape[:2]
    if max(h, w) <= WORK_SIDE:
        return pixels
    if pixels.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        pixels = pixels.astype(np.float32)
    scale = WORK_SIDE / max(h, w)
    return cv2.resize(pixels, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _rgb(pixels: np.ndarray, order) -> np.ndarray:
    """OpenCV's BGR(A) to the RGB(A) everyone else uses, as one contiguous array (by OpenCV
    where it takes the dtype: numpy's indexing of the channel axis is a hundred times slower,
    and was most of decoding a JPEG)."""
    if order is None:
        return np.ascontiguousarray(pixels)
    if pixels.dtype in (np.uint8, np.uint16, np.float32):
        import cv2

        return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_BGR2RGB if len(order) == 3 else cv2.COLOR_BGRA2RGBA)
    return np.ascontiguousarray(pixels[..., order])


def _acquisition(text: str | None) -> tuple[dict | None, list[str]]:
    """The capture settings a PNG carries, if any, and a note when its record cannot be read
    (the pixels are what matters: a malformed record is ignored, not fatal)."""
    import json

    if not text:
        return None, []
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: a record nested too deep to parse
        value = None
    if not isinstance(value, dict):
        return None, [f"its {ACQUISITION_KEY} record is not a JSON object; it was ignored"]
    # anyone can write a PNG text chunk: keep plain values, lists of text and flat mappings,
    # and `not_locked` only as the list of names the pages show
    plain = (str, int, float, bool, type(None))
    kept = {str(k): v for k, v in value.items()
            if isinstance(v, plain) or (isinstance(v, list) and all(isinstance(x, str) for x in v))
            or (isinstance(v, dict) and all(isinstance(x, plain) for x in v.values()))}
    if not isinstance(kept.get("not_locked", []), list):
        del kept["not_locked"]
    return kept, []


def _decode_pixels(data: bytes, name: str, fmt: str) -> np.ndarray:
    import cv2
    from PIL import Image

    damaged = DamagedImage(name, f"cannot be decoded: truncated or corrupt {fmt} file")
    if fmt == "PNG":  # libpng prints its complaints to stderr itself: check every chunk first
        try:
            with Image.open(io.BytesIO(data)) as png:
                png.verify()
        except Exception:
            raise damaged from None
    # OpenCV's own complaints go to its log; the refusal below is the one line a user gets.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.size == 0:
        raise damaged
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    return pixels


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation (OpenCV ignores it when reading unchanged pixels)."""
    transposed = pixels.swapaxes(0, 1)
    return {
        2: pixels[:, ::-1], 3: pixels[::-1, ::-1], 4: pixels[::-1],
        5: transposed, 6: transposed[:, ::-1], 7: transposed[::-1, ::-1], 8: transposed[::-1],
    }.get(orientation, pixels)


def pixel_sha256(pixels: np.ndarray, order=None) -> str:
    """Hash of the decoded pixels with their shape and dtype: same pixels, same hash, whatever
    the file's metadata or container says. `order` reorders channels (BGR to RGB) on the way,
    a strip at a time, so a large capture is hashed without a second full-size copy."""
    h = hashlib.sha256(f"{pixels.shape}|{pixels.dtype.str}|".encode())
    for strip in _strips(pixels):
        h.update(_rgb(strip, order).data)
    return h.hexdigest()

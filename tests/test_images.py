"""Decoding by content, EXIF orientation, hashes, and one clear refusal per bad file."""

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
import tifffile
from conftest import SPECIMENS
from PIL import Image, ImageOps

from specimen_id import images
from specimen_id.errors import DamagedImage, ImageTooLarge, NotAnImage

FIELD = SPECIMENS / "he-tissue-a" / "capture-1.png"


@pytest.fixture(scope="module")
def rgb():
    return cv2.cvtColor(cv2.imread(str(FIELD)), cv2.COLOR_BGR2RGB)


def _pil(array, fmt, **kw):
    out = io.BytesIO()
    Image.fromarray(array).save(out, fmt, **kw)
    return out.getvalue()


def _tiff(array):
    out = io.BytesIO()
    tifffile.imwrite(out, array)
    return out.getvalue()


def _encodings(rgb):
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    grey16 = grey.astype(np.uint16) * 16  # a 12-bit camera in a 16-bit container
    rgb16 = rgb.astype(np.uint16) * 257
    return {
        "jpeg": (_pil(rgb, "JPEG", quality=95), "JPEG", rgb.shape, np.uint8),
        "png": (_pil(rgb, "PNG"), "PNG", rgb.shape, np.uint8),
        "png16-grey": (cv2.imencode(".png", grey16)[1].tobytes(), "PNG", grey.shape, np.uint16),
        "tiff8-grey": (_tiff(grey), "TIFF", grey.shape, np.uint8),
        "tiff8-rgb": (_tiff(rgb), "TIFF", rgb.shape, np.uint8),
        "tiff8-rgba": (_tiff(rgba), "TIFF", rgba.shape, np.uint8),
        "tiff16-grey": (_tiff(grey16), "TIFF", grey.shape, np.uint16),
        "tiff16-rgb": (_tiff(rgb16), "TIFF", rgb.shape, np.uint16),
        "tiff16-rgba": (_tiff(np.dstack([rgb16, np.full(rgb.shape[:2], 65535, np.uint16)])),
                        "TIFF", rgba.shape, np.uint16),
        "bmp": (_pil(rgb, "BMP"), "BMP", rgb.shape, np.uint8),
        "webp": (_pil(rgb, "WEBP", lossless=True), "WEBP", rgb.shape, np.uint8),
        "gif": (_pil(rgb, "GIF"), "GIF", rgb.shape, np.uint8),
        "pnm": (_pil(rgb, "PPM"), "PPM", rgb.shape, np.uint8),
        "pgm": (_pil(grey, "PPM"), "PPM", grey.shape, np.uint8),
    }


def test_every_format_loads_by_content_not_extension(tmp_path, rgb):
    for name, (data, fmt, shape, dtype) in _encodings(rgb).items():
        path = tmp_path / f"{name}.dat"  # the extension says nothing
        path.write_bytes(data)
        capture = images.load(path)
        assert (capture.format, capture.pixels.shape, capture.pixels.dtype) == (fmt, shape, dtype), name


def test_lossless_formats_keep_exact_pixels(tmp_path, rgb):
    encodings = _encodings(rgb)
    reference = images.decode(encodings["png"][0], "ref.png")
    for name in ("tiff8-rgb", "bmp", "webp", "pnm"):
        capture = images.decode(encodings[name][0], name)
        np.testing.assert_array_equal(capture.pixels, rgb)
        assert capture.pixel_sha256 == reference.pixel_sha256, name
        assert capture.file_sha256 != reference.file_sha256, name
    sixteen = images.decode(encodings["tiff16-rgb"][0], "16")
    np.testing.assert_array_equal(sixteen.pixels, rgb.astype(np.uint16) * 257)  # all 16 bits kept


def test_gif_gives_its_first_frame(rgb):
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    first = np.asarray(Image.open(io.BytesIO(out.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(images.decode(out.getvalue(), "anim.gif").pixels, first)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(rgb, orientation):
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(out.getvalue()))))
    capture = images.decode(out.getvalue(), "rotated.jpg")
    assert capture.pixels.shape == expected.shape
    # same orientation as Pillow's reference (JPEG decoders differ by a level or two)
    assert np.abs(capture.pixels.astype(int) - expected).mean() < 2
    assert capture.exif["orientation"] == orientation


def test_same_pixels_different_metadata_share_the_pixel_hash(rgb):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Timestamp", "2026-11-25T10:00:00")
    a = images.decode(_pil(rgb, "PNG"), "a.png")
    b = images.decode(_pil(rgb, "PNG", pnginfo=info), "b.png")
    assert a.file_sha256 != b.file_sha256
    assert a.pixel_sha256 == b.pixel_sha256
    changed = rgb.copy()
    changed[0, 0, 0] ^= 1
    assert images.decode(_pil(changed, "PNG"), "c.png").pixel_sha256 != a.pixel_sha256


def test_non_images_are_refused_naming_the_file(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("these are not pixels")
    with pytest.raises(NotAnImage) as err:
        images.load(text)
    assert str(err.value).startswith(str(text)) and "not an image" in str(err.value)
    with pytest.raises(NotAnImage, match="cannot be read"):
        images.load(tmp_path / "missing.jpg")
    with pytest.raises(NotAnImage, match="directory"):
        images.load(tmp_path)
    pdf = tmp_path / "scan.pdf"
    pdf.write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    with pytest.raises(NotAnImage):
        images.load(pdf)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff8-rgb", "webp"])
def test_truncated_files_are_refused(tmp_path, rgb, fmt):
    data = _encodings(rgb)[fmt][0]
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises((DamagedImage, NotAnImage)) as err:
        images.load(path)
    assert str(path) in str(err.value)


def _png_header_only(width, height):
    """A decompression bomb's calling card: a PNG whose header claims a huge size."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_oversized_images_are_refused_before_decoding(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(60000, 60000))
    with pytest.raises(ImageTooLarge) as err:
        images.load(bomb)
    assert str(bomb) in str(err.value)
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "10000")  # a lab can set its own limit
    with pytest.raises(ImageTooLarge, match="over the limit of 10,000"):
        images.load(FIELD)

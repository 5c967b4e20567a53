"""Odd files never stop a batch: malformed metadata (EXIF orientation, PNG text chunks), NaN
pixels and files whose decoded size is far beyond their file size. Each is refused by name, or
read with a warning, and the files after it are still handled."""

import json
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin
from specimen_id import images
from specimen_id.errors import ImageRefused
from specimen_id.web import create_app

from conftest import SPECIMENS

GOOD = SPECIMENS / "he-tissue-a" / "capture-1.png"


def exif_orientation(kind: int, count: int, value: bytes) -> bytes:
    """An EXIF block holding only an orientation tag of any TIFF type (little-endian)."""
    inline = len(value) <= 4
    entry = struct.pack("<HHI", 0x0112, kind, count) + (value.ljust(4, b"\0") if inline else struct.pack("<I", 26))
    return b"Exif\0\0II*\0" + struct.pack("<IH", 8, 1) + entry + struct.pack("<I", 0) + (b"" if inline else value)


def jpeg_with_exif(path, block: bytes):
    Image.open(GOOD).convert("RGB").save(path, exif=block)
    return path


@pytest.mark.parametrize("kind, count, value, shown", [
    (2, 4, b"abc\0", "'abc'"), (5, 1, struct.pack("<II", 0, 0), "'nan'"),
    (12, 1, struct.pack("<d", float("nan")), "'nan'")])
def test_a_malformed_exif_orientation_is_refused_by_name(run, tmp_path, kind, count, value, shown):
    bad = jpeg_with_exif(tmp_path / "bad.jpg", exif_orientation(kind, count, value))
    result = run("quality", bad, GOOD)
    assert result.exit_code == 1
    assert result.stderr == f"refused: {bad}: has an EXIF orientation of {shown}, not a number 1-8; " \
                            "remove or correct the tag and try again\n"
    assert result.stdout.splitlines()[-1].endswith(": ok")  # the file after it was measured


def test_a_deeply_nested_acquisition_record_is_ignored_with_a_warning(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text(images.ACQUISITION_KEY, "[" * 200_000)
    path = tmp_path / "deep.png"
    Image.open(GOOD).save(path, pnginfo=info)
    capture = images.load(path)
    assert capture.acquisition is None and "record is not a JSON object" in capture.warnings[0]
    assert capture.pixel_sha256 == images.load(GOOD).pixel_sha256  # same pixels, same hash


def test_a_few_nan_pixels_are_filled_in_and_many_are_refused(tmp_path):
    field = cv2.cvtColor(cv2.imread(str(GOOD)), cv2.COLOR_BGR2GRAY).astype(np.float32)
    some = field.copy()
    some[:5, :5] = np.nan
    cv2.imwrite(str(tmp_path / "some.tif"), some)
    capture = images.load(tmp_path / "some.tif")
    assert np.isfinite(capture.pixels).all() and capture.non_finite == pytest.approx(25 / field.size)
    assert capture.quality["non_finite"] == capture.non_finite and "filled in" in capture.warnings[0]
    many = field.copy()
    many[:40] = np.inf
    cv2.imwrite(str(tmp_path / "many.tif"), many)
    with pytest.raises(ImageRefused, match="not numbers .NaN or infinite., over 1%"):
        images.load(tmp_path / "many.tif")


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from([1, 2, 3, 4, 5, 7, 9, 10, 11, 12]), count=st.integers(0, 3),
       value=st.binary(max_size=16), text=st.text(max_size=300))
def test_fuzzed_metadata_is_read_or_refused_never_raised(tmp_path_factory, kind, count, value, text):
    """EXIF orientation of any type and bytes, and any PNG text chunk: decoding gives a
    capture or an ImageRefused naming the file, nothing else."""
    tmp = tmp_path_factory.mktemp("fuzz")
    jpeg = jpeg_with_exif(tmp / "fuzz.jpg", exif_orientation(kind, count, value))
    info = PngImagePlugin.PngInfo()
    info.add_text(images.ACQUISITION_KEY, text)
    png = tmp / "fuzz.png"
    Image.open(GOOD).save(png, pnginfo=info)
    for path in (jpeg, png):
        try:
            capture = images.load(path)
        except ImageRefused as e:
            assert str(e).startswith(f"{path}: ")
        else:
            assert capture.pixels.size and capture.width == 320


def test_a_small_file_of_many_decoded_megabytes_is_refused_or_bounded(tmp_path):
    """A 1 MB PNG of 10000x10000 16-bit RGBA: refused by name under a budget below its 763 MB,
    and under the default budget enrolled and queried with a peak under 3 GB (a subprocess)."""
    bomb = np.zeros((10000, 10000, 4), np.uint16)
    bomb[::50] = 40000
    bomb[..., 3] = 65535
    path = tmp_path / "bomb16.png"
    cv2.imwrite(str(path), bomb, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    del bomb
    cli = [sys.executable, "-m", "specimen_id.cli", "--db", str(tmp_path / "db")]
    env = {"SPECIMEN_ID_MAX_DECODED_MB": "500"}
    refused = subprocess.run([*cli, "query", str(path)], capture_output=True, text=True,
                             env={**__import__("os").environ, **env})
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.splitlines()[-1].startswith(f"refused: {path}: would take 763 MB decoded (10000x10000 RGBA)"), refused.stderr
    peaks = []
    for step in (["enroll", "-s", "bomb", "--allow-low-quality", path], ["query", path]):
        done, peak = _measured(RUN_CLI, "--db", tmp_path / "db", *step)
        assert done.returncode == 0, done.stderr
        peaks.append(peak)
    # the web app shows it: three pages asking for its thumbnails at once
    pages, peak = _measured(THUMBNAILS, tmp_path / "db")
    assert pages.returncode == 0 and pages.stdout.split()[:3] == ["200"] * 3, pages.stderr
    peaks.append(peak)
    print(f"peak RSS of enrol, query and thumbnails of a 10000x10000 16-bit RGBA PNG: {peaks} GB")
    assert max(peaks) < 3


RUN_CLI = "import runpy; runpy.run_module('specimen_id.cli', run_name='__main__')"
# A child's own peak: its memory map's high-water mark as it exits. (Its rusage would not do:
# Linux counts in it the RSS of the process it was forked from, here the whole test session.)
PEAK = ("import atexit, sys\natexit.register(lambda: sys.stderr.write('\\nVmHWM ' + "
        "open('/proc/self/status').read().split('VmHWM:')[1].split()[0] + '\\n'))\n")


def _measured(code: str, *args):
    """Run python -c code args: the finished process and its own peak RSS in GB."""
    done = subprocess.run([sys.executable, "-c", PEAK + code, *map(str, args)], capture_output=True, text=True)
    kilobytes = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("VmHWM ")]
    assert kilobytes, done.stderr
    return done, int(kilobytes[-1]) / 2**20


THUMBNAILS = """
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from fastapi.testclient import TestClient
from specimen_id.store import Database
from specimen_id.web import create_app
with Database(sys.argv[1]) as db:
    uuid = db.captures(db.specimen("bomb")["id"])[0]["uuid"]
client = TestClient(create_app(sys.argv[1]), base_url="http://127.0.0.1")
with ThreadPoolExecutor(3) as pool:
    replies = list(pool.map(lambda size: client.get(f"/images/capture/{uuid}?size={size}"), (256, 512, 0)))
print(*(r.status_code for r in replies))
"""


def test_enrol_and_query_say_what_was_filled_in(run, tmp_path):
    field = cv2.cvtColor(cv2.imread(str(GOOD)), cv2.COLOR_BGR2GRAY).astype(np.float32)
    field[:5, :5] = np.nan
    path = tmp_path / "some-nan.tif"
    cv2.imwrite(str(path), field)
    enrolled = run("enroll", "-s", "float-field", "--allow-low-quality", path)
    assert enrolled.exit_code == 0 and f"warning: {path}: 0.03% of its pixel values were not numbers" in enrolled.stderr
    queried = run("query", "--json", path)
    assert queried.exit_code == 0
    answer = json.loads(queried.stdout)
    assert answer["decision"] == "match" and answer["specimen"] == "float-field"
    assert any("filled in" in w for w in answer["warnings"])
    field[:5, :5], field[-5:, -5:] = field[5, 5], np.nan  # other pixels: not a duplicate
    other = tmp_path / "other-nan.tif"
    cv2.imwrite(str(other), field)
    client = TestClient(create_app(run.db), base_url="http://127.0.0.1")  # the web's enrol form says so too
    page = client.post("/enrol", data={"specimen": "web-float", "allow_low_quality": "true"},
                       files={"files": (other.name, other.read_bytes())}, headers={"Origin": "http://127.0.0.1"})
    assert page.status_code == 200 and "Enrolled with a warning" in page.text
    assert f"{other.name}: 0.03% of its pixel values were not numbers" in page.text

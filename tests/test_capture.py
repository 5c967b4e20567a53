"""`capture` end to end through OpenCV's code path, fed by a real video file of a data/ field
with simulated sensor noise (a camera index goes through the same VideoCapture)."""

import json

import cv2
import numpy as np
import pytest
from conftest import SPECIMENS

from specimen_id import images, quality

FIELD = sorted((SPECIMENS / "he-tissue-a").iterdir())[0]
NOISE = 12.0  # sensor noise (grey levels) in each simulated frame
SKIPPED = 5 + 2  # default warm-up frames, then the frames dropped after locking


@pytest.fixture
def clean():
    return cv2.imread(str(FIELD))


@pytest.fixture
def video(tmp_path, clean):
    """20 noisy frames of one still field, losslessly encoded (FFV1) so the noise is exact."""
    path = tmp_path / "microscope.mkv"
    height, width = clean.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 15, (width, height))
    assert writer.isOpened()
    rng = np.random.default_rng(7)
    for _ in range(20):
        writer.write(np.clip(clean + rng.normal(0, NOISE, clean.shape), 0, 255).astype(np.uint8))
    writer.release()
    return path


def _frames(video):
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            return frames
        frames.append(frame)


def test_capture_averages_frames_into_a_lossless_png_and_enrols_it(run, video, clean, tmp_path):
    out = tmp_path / "shot.png"
    result = run("capture", "--device", video, "--frames", 8, "--out", out, "--enroll", "he-a")
    assert result.exit_code == 0, result.output
    assert f"captured {out}: 320x256, 8 frame(s) averaged" in result.stdout
    assert "enrolled 1" in result.stdout
    # a video file has no controls: each aspect is reported as not locked
    for aspect in ("exposure", "white_balance", "focus"):
        assert f"warning: {aspect} not locked" in result.stderr

    saved = images.load(out)
    assert saved.format == "PNG" and saved.pixels.dtype == np.uint8
    # lossless: the PNG holds exactly the mean of the frames after warm-up, rounded
    frames = np.array(_frames(video), np.float64)
    expected = np.rint(frames[SKIPPED:SKIPPED + 8].mean(axis=0)).astype(np.uint8)
    assert np.array_equal(saved.pixels, cv2.cvtColor(expected, cv2.COLOR_BGR2RGB))

    # averaging 8 frames cuts the noise by about sqrt(8): measured against the clean field
    single_noise = np.std(frames[SKIPPED] - clean)
    averaged_noise = np.std(cv2.cvtColor(saved.pixels, cv2.COLOR_RGB2BGR).astype(np.float64) - clean)
    assert single_noise > 10
    assert averaged_noise < single_noise / 2.5

    (stored,) = json.loads(run("show", "--json", "he-a").stdout)["captures"]
    facts = stored["acquisition"]
    assert (facts["device"], facts["frames"], facts["width"], facts["height"]) == (str(video), 8, 320, 256)
    assert facts["not_locked"] == ["exposure", "white_balance", "focus"]
    assert quality.problems(stored["quality"], quality.LIMITS) == []


def test_capture_query_finds_the_enrolled_field(run, video, tmp_path):
    assert run("enroll", "--specimen", "he-a", FIELD).exit_code == 0
    result = run("capture", "--device", video, "--frames", 4, "--out", tmp_path / "q.png", "--query")
    assert result.exit_code == 0, result.output
    assert f"{tmp_path / 'q.png'}: match he-a" in result.stdout


def test_sixteen_bit_keeps_the_fractions_of_the_average(run, video, tmp_path):
    out = tmp_path / "shot16.png"
    assert run("capture", "--device", video, "--frames", 8, "--bit-depth", 16, "--out", out).exit_code == 0
    saved = images.load(out)
    assert saved.pixels.dtype == np.uint16
    frames = np.array(_frames(video), np.float64)
    mean = frames[SKIPPED:SKIPPED + 8].mean(axis=0)
    assert np.array_equal(saved.pixels, cv2.cvtColor(np.rint(mean * 257).astype(np.uint16), cv2.COLOR_BGR2RGB))
    assert len(np.unique(saved.pixels % 257)) > 1  # values between the 8-bit steps are kept


def test_a_source_that_cannot_give_the_frames_is_one_error_line(run, video, tmp_path):
    out = tmp_path / "never.png"
    result = run("capture", "--device", video, "--frames", 50, "--out", out)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: {video}: gave 20 frame(s), then no more"
    assert not out.exists()
    missing = tmp_path / "no-such.mkv"
    result = run("capture", "--device", missing, "--out", out)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {missing}: no such camera or video file"


def test_a_forged_capture_record_cannot_break_the_specimen_page(run, tmp_path):
    """Anyone can write a PNG text chunk: a malformed acquisition record is reduced to plain
    values and the specimen page still renders."""
    from fastapi.testclient import TestClient
    from PIL import Image, PngImagePlugin

    from specimen_id.images import ACQUISITION_KEY
    from specimen_id.web import create_app

    info = PngImagePlugin.PngInfo()
    info.add_text(ACQUISITION_KEY, json.dumps({"frames": 8, "device": "<b>0</b>", "not_locked": 5,
                                               "controls": [{"deep": {"er": 1}}]}))
    shot = tmp_path / "forged.png"
    Image.open(SPECIMENS / "he-tissue-a" / "capture-1.png").save(shot, pnginfo=info)
    assert run("enroll", "-s", "forged", shot).exit_code == 0
    page = TestClient(create_app(run.db), base_url="http://127.0.0.1").get("/specimens/forged")
    assert page.status_code == 200
    assert "8 frame(s) from &lt;b&gt;0&lt;/b&gt;" in page.text and "not locked" not in page.text

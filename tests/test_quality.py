"""The quality gate at intake: real fields pass (a white brightfield background and a small
sharp object too), blurred and clipped ones are refused for enrolment (unless allowed) and
answered with a warning at query; limits are settings; `quality` measures without enrolling."""

import json

import cv2
import numpy as np
import pytest
from conftest import DATA, QUERIES, SPECIMENS
from fastapi.testclient import TestClient

from specimen_id import images, quality
from specimen_id.store import Database
from specimen_id.web import create_app

DENSE = sorted((SPECIMENS / "he-tissue-b").iterdir())[0]
EXAMPLES = DATA / "quality"  # data/make_quality_sample.py says how each was made
WHITE_BACKGROUND = EXAMPLES / "brightfield-white-background.png"
BLOWN_BACKGROUND = EXAMPLES / "brightfield-over-exposed.png"  # the same field, 1.3x the light
SMALL_OBJECT = EXAMPLES / "small-object.png"


@pytest.fixture
def blurred():
    return EXAMPLES / "blurred-field.png"


@pytest.fixture
def blown_out():
    return EXAMPLES / "clipped-specimen.png"


def test_every_sample_image_passes_the_default_limits():
    paths = [p for p in DATA.rglob("*") if p.suffix in (".png", ".jpg") and p.parent != EXAMPLES]
    assert len(paths) == 34
    for path in paths:
        assert quality.problems(images.load(path).quality, quality.LIMITS) == [], path


def test_a_white_brightfield_background_and_a_small_sharp_object_pass():
    white = images.load(WHITE_BACKGROUND)
    assert (white.pixels >= 255).any(axis=2).mean() > 0.1  # a tenth of the field is at the top
    assert quality.problems(white.quality, quality.LIMITS) == []
    small = images.load(SMALL_OBJECT)
    assert min(small.width, small.height) < 64  # refused as "too small" before
    assert quality.problems(small.quality, quality.LIMITS) == []


def test_a_brightfield_background_clipped_solid_is_over_exposed_however_it_is_saved(run, tmp_path):
    white, blown = images.load(WHITE_BACKGROUND), images.load(BLOWN_BACKGROUND)
    at_top = [(capture.pixels >= 255).any(axis=2).mean() for capture in (white, blown)]
    assert 0.1 < at_top[0] < at_top[1]  # both backgrounds are white; one is clipped solid
    # saved as a JPEG, or by a sensor of twice the pixels, the same capture is judged the same
    bgr = cv2.imread(str(BLOWN_BACKGROUND))
    as_jpeg, larger = tmp_path / "blown.jpg", tmp_path / "blown-larger.png"
    cv2.imwrite(str(as_jpeg), bgr, [cv2.IMWRITE_JPEG_QUALITY, 75])
    cv2.imwrite(str(larger), cv2.resize(bgr, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC))
    result = run("quality", WHITE_BACKGROUND, BLOWN_BACKGROUND, as_jpeg, larger)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{WHITE_BACKGROUND}: ") and lines[0].endswith(": ok")
    for line in lines[1:]:
        assert "over-exposed (the white background is clipped solid: " in line
        assert line.endswith("lower the exposure or the light until the background is only just white")
    assert white.quality["white_clipped"] < quality.LIMITS["max_white_clipped"] < blown.quality["white_clipped"]
    # measures stored before white_clipped was taken are not judged on it
    older = {key: value for key, value in blown.quality.items() if key != "white_clipped"}
    assert quality.problems(older, quality.LIMITS) == []


def test_blur_and_clipping_of_the_specimen_are_measured_where_the_specimen_is(blurred, blown_out):
    sharp = images.load(DENSE).quality
    soft = images.load(blurred).quality
    assert soft["edge_width"] > 1.5 * sharp["edge_width"] and soft["blur"] > sharp["blur"] + 0.2
    # the same field at half the light is as sharp: the measures describe the field, not the gain
    dim = quality.measure((images.load(DENSE).pixels * 0.5).astype(np.uint8))
    assert dim["edge_width"] == pytest.approx(sharp["edge_width"], rel=0.25)
    assert dim["blur"] == pytest.approx(sharp["blur"], abs=0.05)
    # a few saturated pixels on a black background are a large share of the specimen
    clipped = images.load(blown_out)
    assert clipped.quality["clipped_detail"] > 0.125 > (clipped.pixels >= 255).any(axis=2).mean()
    assert images.load(SPECIMENS / "fluo-nuclei-a" / "capture-1.png").quality["clipped_detail"] < 0.01


def test_low_quality_is_refused_for_enrolment_with_one_line_and_the_batch_goes_on(run, blurred, blown_out):
    result = run("enroll", "--specimen", "slide", blurred, blown_out, DENSE)
    assert result.exit_code == 1
    refused = [line for line in result.stderr.splitlines() if line.startswith("refused:")]
    assert len(refused) == 2
    assert refused[0].startswith(f"refused: {blurred}: out of focus (edge width ")
    assert "refocus" in refused[0] and "--allow-low-quality" in refused[0]
    assert refused[1].startswith(f"refused: {blown_out}: over-exposed (")
    assert "of the specimen saturated > max_clipped_detail 0.125): lower the exposure" in refused[1]
    assert "enrolled 1, skipped 0 (already enrolled), refused 2" in result.stdout

    result = run("enroll", "--specimen", "slide", "--allow-low-quality", blurred)
    assert result.exit_code == 0 and "enrolled 1" in result.stdout
    # re-running without the flag is the usual no-op: what is enrolled is skipped, not refused
    result = run("enroll", "--specimen", "slide", blurred, DENSE)
    assert result.exit_code == 0 and "enrolled 0, skipped 2" in result.stdout


def test_limits_are_database_settings(run, blurred):
    assert run("config", "max_blur").stdout.strip() == f"max_blur = {quality.LIMITS['max_blur']}"
    assert run("config", "max_clipped_detail", "2").exit_code == 2  # a share: 0..1
    assert run("config", "max_blur", "0.99").exit_code == 0
    assert run("enroll", "--specimen", "slide", blurred).exit_code == 0


def test_query_answers_low_quality_with_a_warning_and_logs_the_measures(enrolled, blurred):
    result = enrolled("query", "--json", blurred)
    assert result.exit_code == 0
    (answer,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert answer["decision"] in ("match", "no_match", "ambiguous")
    assert answer["warnings"] and answer["warnings"][0].startswith("out of focus")
    assert f"warning: {blurred}: out of focus" in result.stderr
    logged = Database(enrolled.db).logged_query(answer["query_id"])
    assert logged["quality"] == answer["quality"] and answer["quality"]["blur"] > quality.LIMITS["max_blur"]
    good = json.loads(enrolled("query", "--json", QUERIES / "recapture-he-tissue-b.jpg").stdout)
    assert good["warnings"] == []


def test_browse_shows_each_captures_quality(enrolled):
    client = TestClient(create_app(enrolled.db), base_url="http://127.0.0.1")
    (capture,) = client.get("/api/specimens/he-tissue-b").json()["captures"]
    page = client.get("/specimens/he-tissue-b").text
    assert f"edges {100 * capture['quality']['edge_width']:.1f}% wide" in page
    assert capture["quality"] == images.load(DENSE).quality


def test_quality_measures_files_without_enrolling_them(run, tmp_path, blurred):
    result = run("quality", WHITE_BACKGROUND, SMALL_OBJECT)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{WHITE_BACKGROUND}: edge width ") and lines[0].endswith(": ok")
    assert "60x56 (min side 32): ok" in lines[1]
    result = run("quality", "--json", blurred, tmp_path / "missing.png")
    assert result.exit_code == 1
    (measured,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert measured["problems"][0].startswith("out of focus") and measured["limits"] == quality.LIMITS
    assert result.stderr.count("refused: ") == 1 and "missing.png" in result.stderr
    # nothing was enrolled
    assert "specimens: 0" in run("info").stdout


def test_the_web_page_says_why_and_can_enrol_anyway(tmp_path, blown_out):
    client = TestClient(create_app(tmp_path / "db"), base_url="http://127.0.0.1")
    upload = {"files": ("clipped.png", blown_out.read_bytes(), "image/png")}
    page = client.post("/enrol", data={"specimen": "slide"}, files=upload)
    assert page.status_code == 400
    assert "clipped.png: over-exposed (" in page.text and "lower the exposure" in page.text
    assert 'name="allow_low_quality"' in page.text
    answer = client.post("/api/enrol", data={"specimen": "slide", "allow_low_quality": "true"}, files=upload)
    assert answer.status_code == 200 and answer.json()["enrolled"] == 1


def test_a_field_blown_out_to_white_is_over_exposed_and_nan_pixels_are_refused(run, tmp_path):
    white = tmp_path / "white.png"
    cv2.imwrite(str(white), np.full((64, 64, 3), 255, np.uint8))
    nan = tmp_path / "nan.tif"
    cv2.imwrite(str(nan), np.full((50, 50), np.nan, np.float32))
    result = run("quality", white, nan, WHITE_BACKGROUND)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert "over-exposed (100.0% of the specimen saturated" in lines[0]
    assert lines[1].endswith(": ok") and len(lines) == 2  # the batch went on
    assert result.stderr.startswith(f"refused: {nan}: has 100.0% of its pixel values not numbers")

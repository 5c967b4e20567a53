"""The quality gate at intake: real fields pass, blurred and blown-out ones are refused for
enrolment (unless allowed) and answered with a warning at query; limits are settings."""

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
BRIGHT = sorted((SPECIMENS / "brightfield-a").iterdir())[0]


def _write(path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture
def blurred(tmp_path):
    return _write(tmp_path / "blurred.png", cv2.GaussianBlur(images.load(DENSE).pixels, (0, 0), 3))


@pytest.fixture
def blown_out(tmp_path):
    pixels = images.load(BRIGHT).pixels.astype(np.float32) * 3
    return _write(tmp_path / "blown-out.png", np.clip(pixels, 0, 255).astype(np.uint8))


def test_every_sample_image_passes_the_default_limits():
    paths = [p for p in DATA.rglob("*") if p.suffix in (".png", ".jpg")]
    assert len(paths) == 34
    for path in paths:
        assert quality.problems(images.load(path).quality, quality.LIMITS) == [], path


def test_blur_lowers_focus_and_gain_raises_clipping(blurred, blown_out):
    sharp = images.load(DENSE).quality
    assert images.load(blurred).quality["focus"] < sharp["focus"] / 5
    assert images.load(blown_out).quality["bright_clipped"] > 0.2 > images.load(BRIGHT).quality["bright_clipped"]
    # the measure describes the field, not the gain: a copy at half the light (whose raw
    # Laplacian variance is a quarter) stays about as sharp, give or take its coarser steps
    dim = (images.load(DENSE).pixels * 0.5).astype(np.uint8)
    assert quality.measure(dim)["focus"] == pytest.approx(sharp["focus"], rel=0.25)


def test_low_quality_is_refused_for_enrolment_with_one_line_and_the_batch_goes_on(run, blurred, blown_out):
    result = run("enroll", "--specimen", "slide", blurred, blown_out, DENSE)
    assert result.exit_code == 1
    refused = [line for line in result.stderr.splitlines() if line.startswith("refused:")]
    assert len(refused) == 2
    assert refused[0].startswith(f"refused: {blurred}: out of focus (focus ")
    assert "--allow-low-quality" in refused[0]
    assert refused[1].startswith(f"refused: {blown_out}: over-exposed (")
    assert "enrolled 1, skipped 0 (already enrolled), refused 2" in result.stdout

    result = run("enroll", "--specimen", "slide", "--allow-low-quality", blurred)
    assert result.exit_code == 0 and "enrolled 1" in result.stdout
    # re-running without the flag is the usual no-op: what is enrolled is skipped, not refused
    result = run("enroll", "--specimen", "slide", blurred, DENSE)
    assert result.exit_code == 0 and "enrolled 0, skipped 2" in result.stdout


def test_limits_are_database_settings(run, blurred):
    assert run("config", "min_focus").stdout.strip() == f"min_focus = {quality.LIMITS['min_focus']}"
    assert run("config", "max_bright_clipped", "2").exit_code == 2  # a share: 0..1
    assert run("config", "min_focus", "0.5").exit_code == 0
    assert run("enroll", "--specimen", "slide", blurred).exit_code == 0


def test_query_answers_low_quality_with_a_warning_and_logs_the_measures(enrolled, blurred):
    result = enrolled("query", "--json", blurred)
    assert result.exit_code == 0
    (answer,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert answer["decision"] in ("match", "no_match", "ambiguous")
    assert answer["warnings"] and answer["warnings"][0].startswith("out of focus")
    assert f"warning: {blurred}: out of focus" in result.stderr
    logged = Database(enrolled.db).logged_query(answer["query_id"])
    assert logged["quality"]["focus"] == answer["quality"]["focus"]
    good = json.loads(enrolled("query", "--json", QUERIES / "recapture-he-tissue-b.jpg").stdout)
    assert good["warnings"] == []


def test_browse_shows_each_captures_quality(enrolled):
    client = TestClient(create_app(enrolled.db), base_url="http://127.0.0.1")
    (capture,) = client.get("/api/specimens/he-tissue-b").json()["captures"]
    page = client.get("/specimens/he-tissue-b").text
    assert f"focus {capture['quality']['focus']:.1f}" in page
    assert capture["quality"] == images.load(DENSE).quality

"""Where a query lies on each candidate: overlap shares, offset, rotation and zoom; the decision
rule for overlapping fields; neighbours reported, never rivals; overlaps noticed at enrolment.
Real confocal tiles (data/real): tile-a07-shifted-right is a window of the re-imaged mosaic a
third of a field right of tile A07, so two thirds of it lie in A07 and a third in A06."""

import json

import cv2
import numpy as np
import pytest
from conftest import DATA

from specimen_id import images

REAL = DATA / "real"


def _answer(run, path):
    (line,) = run("query", "--json", path).stdout.splitlines()
    return json.loads(line)


@pytest.fixture
def tiles(run):
    for name in ("tile-a07", "tile-a06"):
        assert run("enroll", "-s", name, REAL / f"{name}.png").exit_code == 0
    return run


def test_a_moved_stage_matches_the_field_it_mostly_shows_and_names_the_neighbour(tiles):
    answer = _answer(tiles, REAL / "tile-a07-shifted-right.png")
    assert answer["decision"] == "match" and answer["specimen"] == "tile-a07", answer
    place = answer["candidates"][0]["placement"]
    # 512-px tiles: the window starts 171 px right of A07 (a third), re-mounted ~(12, -25) px off
    assert place["overlap_query"] == pytest.approx(0.67, abs=0.05)
    assert place["offset_px"][0] == pytest.approx(171, abs=20) and abs(place["offset_px"][1]) < 40
    assert place["scale"] == pytest.approx(1.0, abs=0.03) and abs(place["rotation_deg"]) < 1
    # the neighbouring tile shares a third: reported as an overlap, not a rival
    (neighbour,) = answer["overlaps"]
    assert neighbour["specimen"] == "tile-a06" and neighbour["overlap_query"] == pytest.approx(0.38, abs=0.06)
    table = tiles("query", REAL / "tile-a07-shifted-right.png").stdout
    assert "placed: " in table and "% of the query in its field" in table
    assert "overlaps tile-a06 (capture " in table


def test_two_fields_that_overlap_by_a_third_are_each_found(run, tmp_path):
    """Two enrolled specimens that share a third of their pixels (the stage moved between
    them): a capture of either is that one, with the other as its neighbour."""
    tile = images.load(REAL / "tile-a07.png").pixels
    for name, part in (("left", tile[:, :307]), ("right", tile[:, 205:])):  # 102 of 307 px shared
        cv2.imwrite(str(tmp_path / f"{name}.png"), part)
        assert run("enroll", "-s", name, tmp_path / f"{name}.png").exit_code == 0
    again = images.load(REAL / "tile-a07-remounted.png").pixels
    for name, part in (("left", again[:, :307]), ("right", again[:, 205:])):
        cv2.imwrite(str(tmp_path / f"query-{name}.png"), part)
        answer = _answer(run, tmp_path / f"query-{name}.png")
        assert answer["decision"] == "match" and answer["specimen"] == name, answer
        assert [o["specimen"] for o in answer["overlaps"]] == ["right" if name == "left" else "left"]


def test_enrolment_notices_an_overlapping_field(tiles, tmp_path):
    result = tiles("enroll", "-s", "window", REAL / "tile-a07-shifted-right.png")
    assert result.exit_code == 0
    lines = [line for line in result.stdout.splitlines() if line.startswith("overlaps: ")]
    shown = json.loads(tiles("show", "--json", "tile-a07").stdout)
    a07 = shown["captures"][0]["uuid"]
    assert any(line.startswith(f"overlaps: {REAL / 'tile-a07-shifted-right.png'}: ") and "of tile-a07 (capture "
               f"{a07})" in line for line in lines), result.stdout
    share = int(next(line for line in lines if "tile-a07 (" in line).split(": ")[2].split("%")[0])
    assert 55 <= share <= 75
    # recorded, and shown from both sides
    (seen,) = [o for o in shown["overlaps"] if o["specimen"] == "window"]
    assert seen["capture"] == a07 and seen["share_of_capture"] == pytest.approx(share / 100, abs=0.01)
    window = json.loads(tiles("show", "--json", "window").stdout)
    assert {o["specimen"] for o in window["overlaps"]} == {"tile-a07", "tile-a06"}
    assert "shares" in tiles("show", "window").stdout


def _rotated(pixels, degrees):
    if degrees % 90 == 0:
        return np.ascontiguousarray(np.rot90(pixels, -degrees // 90))
    h, w = pixels.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), -degrees, 1.0)  # clockwise, as np.rot90(-k)
    return cv2.warpAffine(pixels, m, (w, h), borderMode=cv2.BORDER_REFLECT)


@pytest.mark.parametrize("degrees", [90, 180, 30])
def test_any_rotation_matches_with_its_angle(tiles, tmp_path, degrees):
    query = tmp_path / f"rotated-{degrees}.png"
    cv2.imwrite(str(query), _rotated(images.load(REAL / "tile-a07-remounted.png").pixels, degrees))
    answer = _answer(tiles, query)
    assert answer["decision"] == "match" and answer["specimen"] == "tile-a07", answer
    angle = answer["candidates"][0]["placement"]["rotation_deg"]
    assert min(abs(angle - degrees) % 360, 360 - abs(angle - degrees) % 360) < 3, angle


def _centre(pixels, share):
    h, w = pixels.shape[:2]
    ch, cw = int(h * share), int(w * share)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return cv2.resize(pixels[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("zoom", [1.5, 2.0])
def test_zoomed_in_matches_with_its_scale(tiles, tmp_path, zoom):
    query = tmp_path / f"zoom-{zoom}.png"
    cv2.imwrite(str(query), _centre(images.load(REAL / "tile-a07-remounted.png").pixels, 1 / zoom))
    answer = _answer(tiles, query)
    assert answer["decision"] == "match" and answer["specimen"] == "tile-a07", answer
    place = answer["candidates"][0]["placement"]
    assert place["scale"] == pytest.approx(zoom, rel=0.05)
    assert place["overlap_query"] > 0.9 and place["overlap_candidate"] == pytest.approx(1 / zoom ** 2, abs=0.08)


def test_zoomed_out_matches_a_field_enrolled_closer(run, tmp_path):
    close = tmp_path / "close.png"
    cv2.imwrite(str(close), _centre(images.load(REAL / "tile-a07.png").pixels, 0.5))
    assert run("enroll", "-s", "close", close).exit_code == 0
    assert run("enroll", "-s", "tile-a06", REAL / "tile-a06.png").exit_code == 0
    answer = _answer(run, REAL / "tile-a07-remounted.png")
    assert answer["decision"] == "match" and answer["specimen"] == "close", answer
    place = answer["candidates"][0]["placement"]
    assert place["scale"] == pytest.approx(0.5, rel=0.05) and place["overlap_candidate"] > 0.9


def test_calibration_does_not_count_a_neighbour_as_an_impostor(run, tmp_path):
    """Two fields that share a third verify as one scene; `calibrate` must not take that for
    a false match and raise the threshold past every score."""
    tile = images.load(REAL / "tile-a07.png").pixels
    for name, part in (("left", tile[:, :307]), ("right", tile[:, 205:])):
        cv2.imwrite(str(tmp_path / f"{name}.png"), part)
        assert run("enroll", "-s", name, tmp_path / f"{name}.png").exit_code == 0
    assert run("enroll", "-s", "tile-a06", REAL / "tile-a06.png").exit_code == 0
    assert run("calibrate", "--min-genuine", "10").exit_code == 0
    again = images.load(REAL / "tile-a07-remounted.png").pixels
    cv2.imwrite(str(tmp_path / "query-left.png"), again[:, :307])
    answer = _answer(run, tmp_path / "query-left.png")
    assert answer["threshold"] < 0.999
    assert answer["decision"] == "match" and answer["specimen"] == "left", answer


def test_the_specimen_page_lists_its_overlaps(tiles):
    from fastapi.testclient import TestClient

    from specimen_id.web import create_app

    assert tiles("enroll", "-s", "window", REAL / "tile-a07-shifted-right.png").exit_code == 0
    client = TestClient(create_app(tiles.db), base_url="http://127.0.0.1")
    page = client.get("/specimens/tile-a07")
    assert page.status_code == 200 and 'id="overlaps"' in page.text
    assert '<a href="/specimens/window">window</a>' in page.text
    (seen,) = [o for o in client.get("/api/specimens/window").json()["overlaps"] if o["specimen"] == "tile-a07"]
    assert 0.55 <= seen["share_of_capture"] <= 0.75

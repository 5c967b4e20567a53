"""Identity evidence on real sample fields: verification, fused score, ambiguous decisions,
exact copies, and calibration of the threshold."""

import json
import shutil
import sqlite3

import cv2
import numpy as np
from conftest import DATA, QUERIES, SPECIMENS
from PIL import Image, PngImagePlugin

from specimen_id import images, local_features, verification
from specimen_id.local_features import LocalFeatures
from specimen_id.search.score import DEFAULT_THRESHOLD, SCORE_KIND, fused, shows_field
from specimen_id.store import Database

NAMES = sorted(p.name for p in SPECIMENS.iterdir())
SPARSE = DATA / "sparse"  # two captures each of six fields of two to six alike nuclei
SPARSE_NAMES = sorted(p.stem for p in SPARSE.glob("sparse-*.jpg"))


def _features(path):
    return local_features.extract(images.load(path).pixels)


def _answers(run, *args):
    return [json.loads(line) for line in run("query", "--json", *args).stdout.splitlines()]


def test_recaptures_verify_and_other_fields_do_not():
    references = {name: _features(SPECIMENS / name / "capture-1.png") for name in NAMES}
    for name in NAMES:
        query = _features(QUERIES / f"recapture-{name}.jpg")
        own = verification.verify(query, references[name]).inliers
        others = [verification.verify(query, references[n]).inliers for n in NAMES if n != name]
        assert own >= 15, (name, own)
        assert max(others) <= 8, (name, others)  # chance alignments stay few


def test_look_alike_fields_are_told_apart_by_layout():
    """Three fluorescence nuclei fields look alike to the pooled CNN; verification decides."""
    fluo = [n for n in NAMES if n.startswith("fluo")]
    for name in fluo:
        query = _features(QUERIES / f"recapture-{name}.jpg")
        scores = {n: verification.verify(query, _features(SPECIMENS / n / "capture-1.png")).inliers for n in fluo}
        assert max(scores, key=scores.get) == name, scores


def test_features_survive_storage():
    features = _features(SPECIMENS / "he-tissue-b" / "capture-1.png")
    again = LocalFeatures.from_bytes(features.to_bytes())
    np.testing.assert_array_equal(again.points, features.points)
    np.testing.assert_array_equal(again.descriptors, features.descriptors)
    np.testing.assert_array_equal(again.thumbnail, features.thumbnail)
    check = verification.verify(features, again)
    assert check.inliers == verification.verify(features, features).inliers > 50
    assert check.correlation > 0.99  # a capture aligned onto itself


def test_aligned_correlation_separates_sparse_fields():
    """A recapture lays over its own field; a chance alignment with another field does not."""
    for name in NAMES:
        query = _features(QUERIES / f"recapture-{name}.jpg")
        own = verification.verify(query, _features(SPECIMENS / name / "capture-1.png"))
        assert own.correlation > 0.8, (name, own.correlation)
        assert len(own.pairs) == own.inliers
        for other in NAMES:
            if other != name:
                check = verification.verify(query, _features(SPECIMENS / other / "capture-1.png"))
                assert check.correlation < 0.6, (name, other, check.correlation)


def test_sparse_fields_are_found_by_their_aligned_correlation():
    """A few alike nuclei give SIFT no more verified pairs than unrelated fields give (a chance
    spread of up to 5 cells); laid over each other at the shift where they match best, a
    re-capture coincides with its own field only."""
    fields = {name: _features(SPARSE / f"{name}.jpg") for name in SPARSE_NAMES}
    unpaired = 0
    for name in SPARSE_NAMES:
        query = _features(SPARSE / f"recapture-{name}.jpg")
        checks = {other: verification.verify(query, f) for other, f in fields.items()}
        own = checks.pop(name)
        unpaired += own.spread <= 4
        assert own.correlation > 0.85, (name, own)
        assert max(c.correlation for c in checks.values()) < own.correlation - 0.15, (name, checks)
    assert unpaired >= 4  # SIFT alone could not tell these from chance


def test_sparse_fields_are_identified_end_to_end(run):
    for name in SPARSE_NAMES:
        assert run("enroll", "-s", name, SPARSE / f"{name}.jpg").exit_code == 0
    answers = _answers(run, *(SPARSE / f"recapture-{name}.jpg" for name in SPARSE_NAMES))
    assert [(a["decision"], a["specimen"]) for a in answers] == [("match", n) for n in SPARSE_NAMES]


def test_uneven_light_does_not_hide_a_field():
    """A ramp of light across a flat brightfield field (from 60% to 140%) would dominate a plain
    correlation; the high-passed thumbnails still lay over each other."""
    rgb = images.load(SPECIMENS / "brightfield-a" / "capture-1.png").pixels[:, :, :3]
    ramp = np.linspace(0.6, 1.4, rgb.shape[1], dtype=np.float32)[None, :, None]
    lit = np.clip(rgb * ramp, 0, 255).astype(np.uint8)
    check = verification.verify(local_features.extract(lit), local_features.extract(rgb))
    assert check.correlation > 0.9, check.correlation


def test_fused_score_grows_with_evidence():
    # (cnn cosine, spread of verified pairs in cells, aligned correlation, independent details)
    assert fused(0.9, 40, 0.95, 100) > DEFAULT_THRESHOLD > fused(0.9, 2, 0.1, 100)
    assert fused(0.8, 30, 0.7, 20) > fused(0.8, 8, 0.7, 20) > fused(0.8, 2, 0.7, 20)
    assert fused(0.9, 0, 0.95, 20) > fused(0.9, 0, 0.7, 20) > fused(0.9, 0, 0.2, 20)
    # a correlation resting on one detail (a glare disc on another) counts for less than on many
    assert fused(0.8, 0, 0.8, 100) > fused(0.8, 0, 0.8, 1)
    assert fused(0.9, 0, -0.8, 20) == fused(0.9, 0, 0.0, 20)  # anti-correlation: no evidence either way
    assert 0 <= fused(0.0, 0, 0.0, 0) < fused(1.0, 64, 1.0, 500) <= 1
    # many verified pairs spread over the field decide, whatever the thumbnails say: a real
    # re-capture at another focus correlates like an unrelated field
    assert fused(0.7, 30, 0.3, 50) > 0.99


def test_query_json_carries_the_evidence(enrolled):
    (answer,) = _answers(enrolled, QUERIES / "recapture-he-tissue-a.jpg")
    assert answer["score_kind"] == SCORE_KIND and answer["threshold"] == DEFAULT_THRESHOLD
    best = answer["candidates"][0]
    assert set(best) >= {"specimen", "score", "capture", "cnn_similarity", "inliers", "spread", "keypoints",
                         "correlation", "details", "placement"}
    assert best["score"] == answer["score"] == fused(best["cnn_similarity"], best["spread"],
                                                     best["correlation"], best["details"])
    assert best["inliers"] >= 15 and all(c["inliers"] <= 8 for c in answer["candidates"][1:])
    assert best["spread"] >= 10 and all(c["spread"] <= 5 for c in answer["candidates"][1:])
    assert answer["exact"] == []


def test_same_field_under_two_names_is_ambiguous(run):
    field = SPECIMENS / "fluo-nuclei-b" / "capture-1.png"
    assert run("enroll", "-s", "slide-7", field).exit_code == 0
    refused = run("enroll", "-s", "slide-7-again", field)
    assert refused.exit_code == 1
    assert "same pixels as capture" in refused.stderr and "'slide-7'" in refused.stderr
    assert run("enroll", "-s", "slide-7-again", "--allow-duplicate", field).exit_code == 0
    run("enroll", "-s", "he", SPECIMENS / "he-tissue-a" / "capture-1.png")
    (answer,) = _answers(run, QUERIES / "recapture-fluo-nuclei-b.jpg")
    assert answer["decision"] == "ambiguous" and answer["specimen"] is None
    assert {c["specimen"] for c in answer["candidates"][:2]} == {"slide-7", "slide-7-again"}
    assert answer["score"] >= answer["threshold"]
    # it names its contenders, and by how little the first leads
    assert [c["specimen"] for c in answer["contenders"]] == [c["specimen"] for c in answer["candidates"][:2]]
    assert [c["score"] for c in answer["contenders"]] == [c["score"] for c in answer["candidates"][:2]]
    assert answer["lead"] == answer["contenders"][0]["score"] - answer["contenders"][1]["score"] < answer["margin"]
    # listing one candidate does not hide the runner-up from the decision
    (one,) = _answers(run, "--top-k", "1", QUERIES / "recapture-fluo-nuclei-b.jpg")
    assert one["decision"] == "ambiguous" and len(one["candidates"]) == 1
    # the table says so too, with each candidate's evidence
    table = run("query", QUERIES / "recapture-fluo-nuclei-b.jpg").stdout.splitlines()
    first, second = answer["contenders"]
    assert table[0] == (f"{answer['query']}: ambiguous (score {answer['score']:.3f}, threshold "
                        f"{answer['threshold']:.3f}) between {first['specimen']} ({first['score']:.3f}) and "
                        f"{second['specimen']} ({second['score']:.3f}): lead {answer['lead']:.3f} < margin "
                        f"{answer['margin']:.3f}")
    best = answer["candidates"][0]
    assert (f"(cnn {best['cnn_similarity']:.3f}, {best['inliers']} inliers over {best['spread']} cells, "
            f"aligned {best['correlation']:.2f})") in table[1]


def test_same_pixels_under_two_names_in_one_run_are_refused(run, tmp_path):
    # one run stores its captures in batches that span specimens: the second copy must still
    # be checked against the first, which waits in the batch
    for name in ("slide-1", "slide-2"):
        (tmp_path / "tree" / name).mkdir(parents=True)
        shutil.copy(SPECIMENS / "fluo-nuclei-b" / "capture-1.png", tmp_path / "tree" / name / "c.png")
    result = run("enroll", "--folders", tmp_path / "tree")
    assert result.exit_code == 1
    assert "same pixels as capture" in result.stderr and "'slide-1'" in result.stderr
    assert "enrolled 1" in result.stdout


def test_exact_copies_are_reported_apart(enrolled, tmp_path):
    original = SPECIMENS / "he-tissue-b" / "capture-1.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "re-saved by another program")
    resaved = tmp_path / "resaved.png"
    Image.open(original).save(resaved, pnginfo=info)
    same_file, same_pixels = _answers(enrolled, original, resaved)
    assert [e["same"] for e in same_file["exact"]] == ["file"]
    assert [e["same"] for e in same_pixels["exact"]] == ["pixels"]
    assert same_pixels["exact"][0]["specimen"] == "he-tissue-b"
    # enrolling those pixels again under their own specimen is a no-op, said out loud
    again = enrolled("enroll", "-s", "he-tissue-b", resaved)
    assert again.exit_code == 0 and "skipped 1" in again.stdout
    assert f"skipped: {resaved}: same pixels" in again.stderr


def test_a_threshold_for_another_kind_of_score_is_never_applied(enrolled):
    with sqlite3.connect(enrolled.db / "specimens.sqlite") as conn:  # as version 0.1 stored it
        conn.execute("INSERT OR REPLACE INTO settings VALUES ('threshold', '0.999')")
    assert enrolled("config", "threshold").stdout.strip() == f"threshold = {DEFAULT_THRESHOLD}"
    (answer,) = _answers(enrolled, QUERIES / "recapture-he-tissue-b.jpg")
    assert answer["threshold"] == DEFAULT_THRESHOLD and answer["decision"] == "match"


def test_calibrate_stores_a_threshold_for_this_model_with_a_report(enrolled, tmp_path):
    result = enrolled("calibrate", "--min-genuine", "20", "--fmr", "0.01", "--out", tmp_path / "cal")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert summary["genuine"] == 20
    assert summary["sources"] == {"repeat captures": 4, "reviewed queries": 0, "simulated re-captures": 16}
    assert summary["impostor"] == 20 and summary["score_kind"] == SCORE_KIND  # each query's best other
    assert summary["fmr"] <= 0.01 and summary["tar"] >= 0.9
    png = cv2.imread(str(tmp_path / "cal" / "calibration.png"))
    assert png is not None and png.shape[1] > 500
    assert "![score distributions and DET curve](calibration.png)" in (tmp_path / "cal" / "calibration.md").read_text()
    shown = float(enrolled("config", "threshold").stdout.split("=")[1])
    assert shown == summary["threshold"]
    with sqlite3.connect(enrolled.db / "specimens.sqlite") as conn:
        stored = json.loads(conn.execute("SELECT value FROM settings WHERE key = 'threshold'").fetchone()[0])
    assert stored["model_id"] == summary["model_id"] and stored["calibration"]["genuine"] == 20


def test_calibrate_with_too_few_impostors_keeps_the_default_floor(enrolled, tmp_path):
    result = enrolled("calibrate", "--min-genuine", "10", "--out", tmp_path / "cal")  # FMR 0.1%
    assert result.exit_code == 0
    assert "cannot resolve FMR 0.001" in result.stderr
    summary = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert summary["threshold"] >= DEFAULT_THRESHOLD
    assert "warning:" in (tmp_path / "cal" / "calibration.md").read_text()


def test_reviewed_decisions_feed_calibration(enrolled, tmp_path):
    confirmed, rejected = _answers(enrolled, QUERIES / "recapture-he-tissue-a.jpg",
                                   QUERIES / "recapture-he-tissue-b.jpg")
    assert enrolled("review", confirmed["query_id"], "confirmed", "--by", "ada").exit_code == 0
    assert enrolled("review", rejected["query_id"], "rejected", "--by", "ada").exit_code == 0
    assert enrolled("calibrate", "--min-genuine", "6", "--out", tmp_path / "cal").exit_code == 0
    summary = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert summary["sources"] == {"repeat captures": 4, "reviewed queries": 2, "simulated re-captures": 1}
    assert summary["genuine"] == 4 + 1 + 1 and summary["impostor"] == 5 + 1  # a best other per query


def test_reviews_that_name_the_specimen_feed_calibration(enrolled, tmp_path):
    """`review --specimen` makes the named candidate a genuine score and the others shown
    impostors; `--none` makes every candidate shown an impostor; a merge carries reviews along."""
    named, nothing = _answers(enrolled, QUERIES / "recapture-he-tissue-a.jpg", QUERIES / "never-enrolled-1.jpg")
    assert enrolled("review", named["query_id"], "--specimen", "he-tissue-a", "--by", "ada").exit_code == 0
    assert enrolled("review", nothing["query_id"], "--none", "--by", "ada", "--note", "a new slide").exit_code == 0
    assert enrolled("review", nothing["query_id"], "--none", "--specimen", "he-tissue-a", "--by", "ada").exit_code == 2
    assert enrolled("review", named["query_id"], "--specimen", "no-such", "--by", "ada").exit_code == 1
    assert enrolled("calibrate", "--min-genuine", "6", "--out", tmp_path / "cal").exit_code == 0
    summary = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    shown = [c for c in named["candidates"] if shows_field(c)] + [c for c in nothing["candidates"] if shows_field(c)]
    assert summary["sources"]["reviewed queries"] == 2
    # the repeat captures and simulated re-captures as in the test above, plus these two
    others = [c for c in named["candidates"] if shows_field(c) and c["specimen"] != "he-tissue-a"]
    assert summary["genuine"] == 4 + 1 + 1
    assert summary["impostor"] == 5 + bool(others) + bool(shown)  # each query's best other
    assert enrolled("merge", "he-tissue-a", "he-tissue-b").exit_code == 0
    with Database(enrolled.db) as db:
        assert db.reviews_of(named["query_id"])[0]["specimen"] == "he-tissue-b"
        assert [r["verdict"] for r in db.reviews_of(nothing["query_id"])] == ["none"]


def test_a_this_one_review_stays_with_its_capture_through_merges_and_moves(enrolled):
    """A review given by "this one" names a capture: after a merge that folds its candidate
    into another's, or a move of the capture to a third specimen, calibration still takes that
    candidate as the genuine score, and counts as impostors only captures held by others."""
    from specimen_id.search.calibrate import reviewed_pairs

    (answer,) = _answers(enrolled, QUERIES / "recapture-he-tissue-a.jpg")
    clicked = next(c for c in answer["candidates"] if c["specimen"] == "he-tissue-a")
    with Database(enrolled.db) as db:
        assert db.review(answer["query_id"], "specimen", "ada", capture=clicked["capture"]) == "he-tissue-a"

    def pairs():
        with Database(enrolled.db) as db:
            (review,) = db.reviewed(SCORE_KIND)
        return review["named"], reviewed_pairs(review)

    others = [c for c in answer["candidates"] if shows_field(c) and c is not clicked]
    assert pairs() == ("he-tissue-a", ([clicked["score"]], [c["score"] for c in others]))
    assert enrolled("merge", "he-tissue-a", "he-tissue-b").exit_code == 0
    folded = [c for c in others if c["specimen"] != "he-tissue-b"]  # he-tissue-b's own is now the same specimen's
    named, (genuine, impostor) = pairs()
    assert named == "he-tissue-b" and genuine == [clicked["score"]] and sorted(impostor) == sorted(
        c["score"] for c in folded)
    assert enrolled("move", clicked["capture"], "fluo-nuclei-a").exit_code == 0
    named, (genuine, impostor) = pairs()
    assert named == "fluo-nuclei-a" and genuine == [clicked["score"]]
    # (the log folded he-tissue-b's own candidate into the clicked one at the merge)
    assert sorted(impostor) == sorted(c["score"] for c in folded if c["specimen"] != "fluo-nuclei-a")

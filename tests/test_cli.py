"""The CLI contract scripts rely on: commands, outputs, JSON, exit codes, bad input."""

import json
import sqlite3

import pytest
from conftest import QUERIES, SPECIMENS

NAMES = sorted(p.name for p in SPECIMENS.iterdir())


def _json_lines(output):
    return [json.loads(line) for line in output.splitlines()]


def test_enrol_folders_then_query_finds_each_specimen(enrolled):
    result = enrolled("query", "--json", *sorted(QUERIES.iterdir()))
    assert result.exit_code == 0, result.output
    answers = {r["query"].rsplit("/", 1)[-1]: r for r in _json_lines(result.stdout)}
    assert len(answers) == 8
    for name in NAMES:
        answer = answers[f"recapture-{name}.jpg"]
        assert (answer["decision"], answer["specimen"]) == ("match", name)
        assert answer["candidates"][0]["specimen"] == name
        assert answer["score"] == answer["candidates"][0]["score"]
    for unknown in ("never-enrolled-1.jpg", "never-enrolled-2.jpg"):
        assert answers[unknown]["decision"] == "no_match"
        assert answers[unknown]["specimen"] is None


def test_query_json_contract(enrolled):
    result = enrolled("query", "--json", "--top-k", "3", QUERIES / "recapture-he-tissue-b.jpg")
    (answer,) = _json_lines(result.stdout)
    assert set(answer) >= {"query", "decision", "specimen", "score", "candidates"}
    assert answer["query"] == str(QUERIES / "recapture-he-tissue-b.jpg")
    assert isinstance(answer["score"], float)
    assert len(answer["candidates"]) == 3  # --top-k counts specimens
    assert len({c["specimen"] for c in answer["candidates"]}) == 3
    scores = [c["score"] for c in answer["candidates"]]
    assert scores == sorted(scores, reverse=True)
    for c in answer["candidates"]:
        assert set(c) >= {"specimen", "score", "capture"}
        assert enrolled("show", "--json", c["specimen"]).stdout.count(c["capture"]) == 1


def test_readable_table_by_default(enrolled):
    result = enrolled("query", QUERIES / "recapture-fluo-nuclei-b.jpg")
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"{QUERIES / 'recapture-fluo-nuclei-b.jpg'}: match fluo-nuclei-b (score ")
    assert "  1. fluo-nuclei-b" in result.stdout


def test_rerun_of_enrol_is_a_noop(enrolled):
    result = enrolled("enroll", "--folders", SPECIMENS)
    assert result.exit_code == 0
    assert "enrolled 0, skipped 8 (already enrolled), refused 0" in result.stdout
    assert enrolled("info", "--json").stdout.count('"captures": 8') == 1


def test_bad_files_are_refused_one_line_each_and_the_batch_goes_on(run, sample_copy):
    good = sample_copy / "specimens" / "he-tissue-a" / "capture-1.png"
    text = sample_copy / "readme.png"
    text.write_text("not an image")
    truncated = sample_copy / "cut.jpg"
    truncated.write_bytes((QUERIES / "recapture-he-tissue-a.jpg").read_bytes()[:4000])
    missing = sample_copy / "missing.tif"
    result = run("enroll", "--specimen", "slide-1", text, good, truncated, missing)
    assert result.exit_code == 1
    assert "enrolled 1, skipped 0 (already enrolled), refused 3" in result.stdout
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3
    for line, path in zip(errors, (text, truncated, missing)):
        assert line.startswith(f"refused: {path}: ")
    assert run("list").stdout.split() == ["slide-1"]


def test_nothing_is_created_when_every_file_is_refused(run, tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    assert run("enroll", "--specimen", "ghost", junk).exit_code == 1
    assert run("list").stdout == ""


def test_query_refusal_is_a_json_line_and_others_still_answer(enrolled, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_text("hello")
    result = enrolled("query", "--json", junk, QUERIES / "recapture-he-tissue-a.jpg")
    assert result.exit_code == 1
    refused, answered = _json_lines(result.stdout)
    assert refused["query"] == str(junk) and refused["decision"] == "refused"
    assert str(junk) in refused["error"] and "not an image" in refused["error"]
    assert answered["specimen"] == "he-tissue-a"


def test_threshold_from_config_and_per_query(enrolled):
    from specimen_id.search.score import DEFAULT_THRESHOLD

    query = QUERIES / "recapture-fluo-nuclei-a.jpg"
    assert enrolled("config", "threshold").stdout.strip() == f"threshold = {DEFAULT_THRESHOLD}"
    answer = _json_lines(enrolled("query", "--json", query).stdout)[0]
    assert answer["decision"] == "match"
    strict = _json_lines(enrolled("query", "--json", "--threshold", "1", query).stdout)[0]  # no score reaches 1
    assert strict["decision"] == "no_match" and strict["specimen"] is None
    assert enrolled("config", "threshold", "1").exit_code == 0
    assert _json_lines(enrolled("query", "--json", query).stdout)[0]["decision"] == "no_match"
    assert enrolled("config", "threshold", "lots").exit_code == 2
    assert enrolled("config", "threshold", "7").exit_code == 2
    assert enrolled("config", "colour", "red").exit_code == 2
    assert enrolled("config", "top_k", "2").exit_code == 0
    assert len(_json_lines(enrolled("query", "--json", query).stdout)[0]["candidates"]) == 2


def test_every_query_is_logged_with_what_explains_it(enrolled):
    enrolled("query", "--threshold", "0.5", QUERIES / "recapture-he-tissue-a.jpg")
    with sqlite3.connect(enrolled.db / "specimens.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        (row,) = conn.execute("SELECT * FROM queries").fetchall()
    from specimen_id import __version__
    from specimen_id.store import Database

    assert row["decision"] == "match" and row["threshold"] == 0.5
    assert row["model_id"].startswith("efficientnet_lite0:")
    assert row["software_version"] == __version__
    assert json.loads(row["candidates"])[0]["specimen"] == "he-tissue-a"
    assert Database(enrolled.db).blobs.file(row["image_key"]).is_file()


def test_list_show_remove_info(enrolled):
    assert enrolled("list").stdout.split() == NAMES
    shown = enrolled("show", "he-tissue-a")
    assert shown.exit_code == 0 and "2 capture(s)" in shown.stdout
    data = json.loads(enrolled("show", "--json", "fluo-nuclei-a").stdout)
    assert len(data["captures"]) == 2 and len(data["uuid"]) == 36
    unknown = enrolled("show", "nobody")
    assert unknown.exit_code == 1 and "no specimen named 'nobody'" in unknown.stderr
    assert enrolled("remove", "nobody").exit_code == 1
    removed = enrolled("remove", "he-tissue-a")
    assert removed.exit_code == 0 and "2 capture(s)" in removed.stdout
    assert "he-tissue-a" not in enrolled("list").stdout.split()
    info = json.loads(enrolled("info", "--json").stdout)
    assert (info["specimens"], info["captures"], info["index_vectors"]) == (5, 6, 6)
    # the removed specimen is no longer a candidate
    answer = _json_lines(enrolled("query", "--json", QUERIES / "recapture-he-tissue-a.jpg").stdout)[0]
    assert "he-tissue-a" not in [c["specimen"] for c in answer["candidates"]]


def test_metadata_and_usage_errors(run):
    one = SPECIMENS / "brightfield-a" / "capture-1.png"
    assert run("enroll", "--specimen", "bf", "--meta", "stain=none", "--meta", "mag=40x", one).exit_code == 0
    assert json.loads(run("show", "--json", "bf").stdout)["metadata"] == {"stain": "none", "mag": "40x"}
    assert run("enroll", "--specimen", "bf", "--meta", "oops", one).exit_code == 2
    assert run("enroll", one).exit_code == 2  # neither --specimen nor --folders
    assert run("enroll", "--specimen", "x").exit_code == 2
    assert run("enroll", "--folders", SPECIMENS, one).exit_code == 2
    assert run("query").exit_code == 2
    assert run("frobnicate").exit_code == 2


def test_database_location_flag_env_default(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from specimen_id.cli import cli

    one = SPECIMENS / "brightfield-a" / "capture-1.png"
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(cli, ["enroll", "-s", "a", str(one)]).exit_code == 0
    assert (tmp_path / "specimen-db" / "specimens.sqlite").is_file()
    env = {"SPECIMEN_ID_DB": str(tmp_path / "from-env")}
    assert runner.invoke(cli, ["enroll", "-s", "b", str(one)], env=env).exit_code == 0
    assert runner.invoke(cli, ["list"], env=env).stdout.split() == ["b"]
    flagged = runner.invoke(cli, ["--db", str(tmp_path / "specimen-db"), "list"], env=env)
    assert flagged.stdout.split() == ["a"]  # --db wins over the environment


def test_locked_database_exits_3_with_what_to_do(enrolled, monkeypatch):
    from filelock import FileLock

    monkeypatch.setenv("SPECIMEN_ID_LOCK_TIMEOUT", "0.2")
    with FileLock(str(enrolled.db / "write.lock"), is_singleton=False):
        result = enrolled("enroll", "-s", "x", SPECIMENS / "brightfield-a" / "capture-1.png")
    assert result.exit_code == 3
    assert "being written by another process" in result.stderr
    assert "SPECIMEN_ID_LOCK_TIMEOUT" in result.stderr


def test_python_api(tmp_path):
    import specimen_id

    with specimen_id.open_database(tmp_path / "api-db") as db:
        report = specimen_id.enroll(db, "he-tissue-b", [SPECIMENS / "he-tissue-b" / "capture-1.png"],
                                    {"stain": "H&E"})
        assert len(report.enrolled) == 1 and not report.refused
        (result,) = specimen_id.query(db, [QUERIES / "recapture-he-tissue-b.jpg"])
        assert (result["decision"], result["specimen"]) == ("match", "he-tissue-b")
        with pytest.raises(specimen_id.UnknownSpecimen):
            db.specimen("nobody")


def test_curate_rename_merge_move_review_and_enrol_a_query(enrolled):
    assert enrolled("rename", "brightfield-a", "bf-slide-1").exit_code == 0
    assert enrolled("rename", "bf-slide-1", "he-tissue-b").exit_code == 1  # taken
    assert "bf-slide-1" in enrolled("list").stdout.split()
    (answer,) = _json_lines(enrolled("query", "--json", QUERIES / "recapture-brightfield-a.jpg").stdout)
    assert answer["specimen"] == "bf-slide-1"
    merged = enrolled("merge", "fluo-nuclei-c", "fluo-nuclei-a")
    assert merged.exit_code == 0 and "1 capture(s) moved" in merged.stdout
    assert "fluo-nuclei-c" not in enrolled("list").stdout.split()
    (answer,) = _json_lines(enrolled("query", "--json", QUERIES / "recapture-fluo-nuclei-c.jpg").stdout)
    assert answer["specimen"] == "fluo-nuclei-a"  # the merged specimen answers for both fields
    capture = json.loads(enrolled("show", "--json", "he-tissue-a").stdout)["captures"][1]["uuid"]
    assert enrolled("move", capture, "he-tissue-b").exit_code == 0
    assert len(json.loads(enrolled("show", "--json", "he-tissue-b").stdout)["captures"]) == 2
    assert enrolled("move", "no-such-capture", "he-tissue-b").exit_code == 1
    assert enrolled("review", answer["query_id"], "confirmed", "--by", "ada").exit_code == 0
    assert enrolled("review", answer["query_id"], "maybe", "--by", "ada").exit_code == 2
    added = enrolled("enroll", "-s", "fluo-nuclei-a", "--query", answer["query_id"])
    assert added.exit_code == 0 and "enrolled 1" in added.stdout
    assert len(json.loads(enrolled("show", "--json", "fluo-nuclei-a").stdout)["captures"]) == 2 + 1 + 1
    assert enrolled("enroll", "-s", "x", "--query", "nope").exit_code == 2
    with sqlite3.connect(enrolled.db / "specimens.sqlite") as conn:
        assert conn.execute("SELECT verdict, reviewer FROM reviews").fetchall() == [("confirmed", "ada")]

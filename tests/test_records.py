"""Nothing lost: the audit trail of every change, soft delete with restore, purge for good."""

import getpass
import json
import re
import socket
import sqlite3

import pytest
from conftest import QUERIES, SPECIMENS
from fastapi.testclient import TestClient

from specimen_id.store import Database
from specimen_id.store.vectors import FaissIndex
from specimen_id.web import create_app

HE_A = [SPECIMENS / "he-tissue-a" / "capture-1.png", SPECIMENS / "he-tissue-a" / "capture-2.png"]
FLUO_B = SPECIMENS / "fluo-nuclei-b" / "capture-1.png"
BF = SPECIMENS / "brightfield-a" / "capture-1.png"
UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")


def _lines(output):
    return [json.loads(line) for line in output.splitlines()]


def _answer(run, path):
    result = run("query", "--json", path)
    return json.loads(result.stdout.splitlines()[0])


@pytest.fixture
def small(run):
    """Three specimens, four captures."""
    for name, files in (("he-a", HE_A), ("fluo-b", [FLUO_B]), ("bf", [BF])):
        assert run("enroll", "-s", name, "--meta", "stain=x", *files).exit_code == 0
    return run


def test_remove_hides_everywhere_and_restore_brings_back_the_same_records(small):
    db = Database(small.db)
    before = {"uuid": db.specimen("he-a")["uuid"],
              "captures": [(c["id"], c["uuid"]) for c in db.captures(db.specimen("he-a")["id"])]}
    assert _answer(small, QUERIES / "recapture-he-tissue-a.jpg")["specimen"] == "he-a"

    removed = small("remove", "he-a")
    assert removed.exit_code == 0 and "2 capture(s)" in removed.stdout and "restore" in removed.stdout
    assert small("list").stdout.split() == ["bf", "fluo-b"]
    answer = _answer(small, QUERIES / "recapture-he-tissue-a.jpg")
    assert answer["decision"] == "no_match" and "he-a" not in [c["specimen"] for c in answer["candidates"]]
    # exact copies of a removed capture are not revealed either
    assert _answer(small, HE_A[0])["exact"] == []
    index, db = FaissIndex.load(small.db / "index.faiss"), Database(small.db)
    assert sorted(index.ids()) == sorted(db.vectors.stored(db.model_id, index.dim)[0]) and len(index) == 2
    info = json.loads(small("info", "--json").stdout)
    assert (info["specimens"], info["captures"], info["removed_specimens"], info["removed_captures"],
            info["index_vectors"]) == (2, 2, 1, 2, 2)
    # still in SQLite with its images
    con = sqlite3.connect(small.db / "specimens.sqlite")
    keys = [r[0] for r in con.execute("SELECT image_key FROM captures c JOIN specimens s "
                                      "ON s.id = c.specimen_id WHERE s.name = 'he-a'")]
    assert len(keys) == 2 and all(Database(small.db).blobs.file(k).is_file() for k in keys)
    # the name stays reserved, with a message saying what to do
    shown = small("show", "he-a")
    assert shown.exit_code == 1 and "was removed" in shown.stderr and "restore he-a" in shown.stderr
    again = small("enroll", "-s", "he-a", BF)
    assert again.exit_code == 1 and f"refused: {BF}: specimen 'he-a' was removed" in again.stderr
    assert small("rename", "bf", "he-a").exit_code == 1
    assert small("merge", "bf", "he-a").exit_code == 1
    assert small("remove", "he-a").exit_code == 1
    # the web pages do not show it
    client = TestClient(create_app(small.db), base_url="http://127.0.0.1")
    assert "he-a" not in [s["name"] for s in client.get("/api/specimens").json()]
    assert client.get("/specimens/he-a").status_code == 404
    assert client.get(f"/images/capture/{before['captures'][0][1]}").status_code == 404

    restored = small("restore", "he-a")
    assert restored.exit_code == 0 and "2 capture(s)" in restored.stdout
    db = Database(small.db)
    assert db.specimen("he-a")["uuid"] == before["uuid"]
    assert [(c["id"], c["uuid"]) for c in db.captures(db.specimen("he-a")["id"])] == before["captures"]
    assert len(FaissIndex.load(small.db / "index.faiss")) == 4
    answer = _answer(small, QUERIES / "recapture-he-tissue-a.jpg")
    assert (answer["decision"], answer["specimen"]) == ("match", "he-a")
    assert answer["candidates"][0]["capture"] in [u for _, u in before["captures"]]
    assert small("restore", "he-a").exit_code == 1  # not removed: nothing to restore


def test_purge_deletes_for_good_but_keeps_files_still_referenced(small):
    # a logged query of the very same file shares its content-addressed image
    _answer(small, HE_A[0])
    assert small("purge", "he-a").exit_code == 1  # only a removed specimen can be purged
    small("remove", "he-a")
    db = Database(small.db)
    paths = [db.blobs.file(c["image_key"]) for c in db.captures(db.specimen("he-a", removed=True)["id"])]
    purged = small("purge", "he-a")
    assert purged.exit_code == 0, purged.output
    assert "2 capture(s), 1 image file(s) deleted" in purged.stdout
    assert [p.exists() for p in paths] == [True, False]  # the queried one stays
    con = sqlite3.connect(small.db / "specimens.sqlite")
    assert con.execute("SELECT COUNT(*) FROM specimens WHERE name = 'he-a'").fetchone()[0] == 0
    assert con.execute("SELECT COUNT(*) FROM captures").fetchone()[0] == 2
    assert con.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 2
    assert con.execute("SELECT COUNT(*) FROM local_features").fetchone()[0] == 2
    # the name is free again, and the trail still says what was purged
    assert small("enroll", "-s", "he-a", HE_A[1]).exit_code == 0
    trail = _lines(small("audit", "--specimen", "he-a", "--json").stdout)
    purge = next(r for r in trail if r["action"] == "purge")
    assert len(purge["changes"]["before"]["captures"]) == 2
    assert purge["changes"]["before"]["metadata"] == {"stain": "x"}
    # --all-removed purges every removed specimen and nothing else
    small("remove", "bf")
    small("remove", "fluo-b")
    everything = small("purge", "--all-removed")
    assert everything.exit_code == 0 and everything.stdout.count("purged ") == 2
    assert small("list").stdout.split() == ["he-a"]
    assert small("purge").exit_code == 2


def test_every_change_is_audited_with_who_where_when_and_what(small):
    env = {"SPECIMEN_ID_USER": "dr-ada"}
    db = Database(small.db)
    he_a = db.specimen("he-a")
    capture = db.captures(db.specimen("bf")["id"])[0]["uuid"]
    query_id = _answer(small, QUERIES / "recapture-he-tissue-a.jpg")["query_id"]
    steps = [("rename", "he-a", "tissue"), ("move", capture, "tissue"), ("merge", "fluo-b", "tissue"),
             ("review", query_id, "confirmed", "--by", "bob"), ("config", "threshold", "0.6"),
             ("config", "margin", "0.2"), ("remove", "bf"), ("restore", "bf"),
             ("enroll", "-s", "tissue", "--meta", "stain=eosin", QUERIES / "never-enrolled-1.jpg")]
    for step in steps:
        result = small(*step, env=env)
        assert result.exit_code == 0, (step, result.output)
    Database(small.db).edit_specimen("tissue", {"stain": "H&E"}, "seen twice")

    trail = _lines(small("audit", "--json").stdout)
    actions = [r["action"] for r in reversed(trail)]
    # the fixture's enrolments first (a create, then one row per capture), then each step above
    assert actions[:7] == ["create", "enrol", "enrol", "create", "enrol", "create", "enrol"]
    assert actions[7:] == ["rename", "move", "merge", "merge", "review", "setting", "setting",
                           "remove", "restore", "edit", "enrol", "edit"]
    for row in trail:
        assert UTC.match(row["at"]) and row["station"] == socket.gethostname()
        assert row["client"] is None
    assert {r["user"] for r in trail[1:12]} == {"dr-ada"}  # the CLI steps
    assert trail[0]["user"] == getpass.getuser()  # the API's edit: the OS user
    rename = next(r for r in trail if r["action"] == "rename")
    assert rename["specimen_uuid"] == he_a["uuid"]
    assert rename["changes"] == {"before": {"name": "he-a"}, "after": {"name": "tissue"}}
    move = next(r for r in trail if r["action"] == "move")
    assert move["capture_uuid"] == capture and move["changes"]["after"]["name"] == "tissue"
    threshold = next(r for r in trail if r["action"] == "setting" and r["changes"]["key"] == "threshold")
    assert threshold["changes"]["after"]["value"] == 0.6
    margin = next(r for r in trail if r["action"] == "setting" and r["changes"]["key"] == "margin")
    assert (margin["changes"]["before"], margin["changes"]["after"]) == (0.1, 0.2)
    review = next(r for r in trail if r["action"] == "review")
    assert review["changes"]["query"] == query_id and review["changes"]["after"]["reviewer"] == "bob"
    edit = trail[0]
    assert edit["changes"]["before"]["metadata"] == {"stain": "eosin"}
    assert edit["changes"]["after"] == {"metadata": {"stain": "H&E"}, "notes": "seen twice"}

    # --specimen follows the specimen through its renames; --limit keeps the newest
    mine = _lines(small("audit", "--specimen", "tissue", "--json").stdout)
    assert {r["specimen_uuid"] for r in mine} == {he_a["uuid"]} and mine[-1]["action"] == "create"
    assert [r["id"] for r in _lines(small("audit", "--limit", "2", "--json").stdout)] == [trail[0]["id"], trail[1]["id"]]
    text = small("audit", "--limit", "1").stdout
    assert text.startswith(edit["at"]) and "  edit  tissue  " in text


def test_reindex_is_audited(small):
    assert small("reindex", env={"SPECIMEN_ID_USER": "night-shift"}).exit_code == 0
    (row,) = _lines(small("audit", "--limit", "1", "--json").stdout)
    assert row["action"] == "reindex" and row["user"] == "night-shift"
    assert row["changes"]["after"]["captures"] == 4
    assert row["changes"]["before"]["model_id"] == row["changes"]["after"]["model_id"]


def test_the_trail_is_append_only_and_rolls_back_with_its_change(small):
    con = sqlite3.connect(small.db / "specimens.sqlite")
    count = con.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    for sql in ("UPDATE audit SET user = 'someone else'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute(sql)
    con.rollback()
    # a change that fails leaves neither the change nor its audit row
    db = Database(small.db)
    with pytest.raises(RuntimeError):
        with db.db.atomic():
            db.edit_specimen("bf", {"stain": "changed"}, "")
            raise RuntimeError("power cut")
    assert Database(small.db).specimen("bf")["metadata"] == {"stain": "x"}
    assert con.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == count


def test_web_changes_record_the_server_user_and_the_client_address(small):
    client = TestClient(create_app(small.db), base_url="http://127.0.0.1")
    edited = client.post("/api/specimens/bf/edit", data={"metadata": "stain = none", "notes": "web"},
                         headers={"Origin": "http://127.0.0.1"})
    assert edited.status_code == 200
    (row,) = _lines(small("audit", "--limit", "1", "--json").stdout)
    assert row["action"] == "edit" and row["client"] == "web testclient"
    assert row["user"] and row["station"] == socket.gethostname()
    page = client.get("/specimens/bf").text
    assert re.search(r'<table id="audit">.*<td>edit</td>.*<td>create</td>', page, re.S)
    assert "web testclient" in page
    # an enrolment runs in the service's worker pool: it is the client's change all the same
    enrolled = client.post("/api/enrol", data={"specimen": "from-the-web"}, headers={"Origin": "http://127.0.0.1"},
                           files={"files": ("a.jpg", (QUERIES / "never-enrolled-1.jpg").read_bytes(), "image/jpeg")})
    assert enrolled.json()["enrolled"] == 1
    rows = _lines(small("audit", "--specimen", "from-the-web", "--json").stdout)
    assert {r["action"] for r in rows} == {"create", "enrol"} and {r["client"] for r in rows} == {"web testclient"}

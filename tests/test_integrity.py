"""`verify` and `repair` on real databases damaged in each way a disk, a person or a crash can
damage them: verify names the damage, repair fixes what the source of truth allows and says
what it cannot."""

import json
import os
import shutil
import sqlite3
import time

import numpy as np
import pytest
from conftest import QUERIES, SPECIMENS

from specimen_id.store import Database
from specimen_id.store.files import image_relpath
from specimen_id.store.vectors import FaissIndex

LONG_AGO = time.time() - 3600


@pytest.fixture
def db_dir(enrolled):
    """An enrolled database that has also answered one query (so it holds a query image)."""
    result = enrolled("query", "--json", QUERIES / "recapture-fluo-nuclei-b.jpg")
    assert result.exit_code == 0, result.output
    enrolled.dir = enrolled.db
    return enrolled


def _capture(path, specimen="he-tissue-a"):
    with Database(path) as db:
        return db.captures(db.specimen(specimen)["id"])[0]


def _sql(path, statement, params=()):
    conn = sqlite3.connect(path / "specimens.sqlite")
    with conn:
        conn.execute(statement, params)
    conn.close()


def _answer(run, query):
    return json.loads(run("query", "--json", query).stdout.splitlines()[0])


def test_a_sound_database_passes(db_dir):
    result = db_dir("verify")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [result.output.splitlines()[-1]]  # the summary alone
    assert result.output.startswith("ok: 6 specimen(s), 8 capture(s), 9 image file(s)")


def test_missing_image_is_named_and_cannot_be_repaired(db_dir):
    capture = _capture(db_dir.db)
    (db_dir.db / image_relpath(capture["image_key"])).unlink()
    result = db_dir("verify")
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if line.startswith("problem:")]
    assert problems == [f"problem: capture {capture['uuid']} of 'he-tissue-a': image file "
                        f"{image_relpath(capture['image_key'])} is missing"]
    result = db_dir("repair")
    assert result.exit_code == 1
    assert f"cannot fix: capture {capture['uuid']} of 'he-tissue-a'" in result.output
    assert _capture(db_dir.db)["uuid"] == capture["uuid"]  # nothing deleted to pass verify
    assert db_dir("verify").exit_code == 1


def test_altered_image_is_named(db_dir):
    capture = _capture(db_dir.db, "brightfield-a")
    path = db_dir.db / image_relpath(capture["image_key"])
    path.write_bytes(path.read_bytes() + b"\0")
    result = db_dir("verify")
    assert result.exit_code == 1
    assert f"capture {capture['uuid']} of 'brightfield-a': image file {image_relpath(capture['image_key'])} was altered" \
        in result.output
    assert "cannot fix" in db_dir("repair").output


def test_altered_query_image_is_named(db_dir):
    with Database(db_dir.db) as db:
        logged = db.queries(1)[0]
    (db_dir.db / image_relpath(logged["image_key"])).unlink()
    result = db_dir("verify")
    assert result.exit_code == 1
    assert f"logged query {logged['uuid']}: image file {image_relpath(logged['image_key'])} is missing" in result.output


def test_a_recorded_path_outside_the_images_folder_is_named_not_read(db_dir, tmp_path):
    outside = tmp_path / "private.png"
    outside.write_bytes(b"not the database's")
    capture = _capture(db_dir.db, "fluo-nuclei-a")
    _sql(db_dir.db, "UPDATE captures SET image_key = ? WHERE uuid = ?", [str(outside), capture["uuid"]])
    _sql(db_dir.db, "UPDATE queries SET image_key = ?", ["../../private.png"])
    result = db_dir("verify")
    assert result.exit_code == 1
    assert (f"problem: capture {capture['uuid']} of 'fluo-nuclei-a': recorded image key "
            f"'{outside}' is not a managed image name") in result.output
    assert "is not a managed image name" in result.output.split(f"'{outside}'")[1]  # the query's too
    assert "was altered" not in result.output  # named for its path, not hashed
    assert outside.read_bytes() == b"not the database's"
    assert db_dir("repair").exit_code == 1 and outside.exists()


def test_dropped_embedding_and_features_are_recomputed(db_dir):
    capture = _capture(db_dir.db, "he-tissue-b")
    with Database(db_dir.db) as db:
        ids, before = db.vectors.stored(db.model_id, db.setting("embedding_dim"))
    _sql(db_dir.db, "DELETE FROM embeddings WHERE capture_id = ?", [capture["id"]])
    _sql(db_dir.db, "DELETE FROM local_features WHERE capture_id = ?", [capture["id"]])
    result = db_dir("verify")
    assert result.exit_code == 1
    assert f"problem: capture {capture['uuid']} of 'he-tissue-b': no embedding for model" in result.output
    assert f"problem: capture {capture['uuid']} of 'he-tissue-b': no local features of version" in result.output
    result = db_dir("repair")
    assert result.exit_code == 0, result.output
    assert "recomputed the embedding and local features of 1 capture(s)" in result.output
    assert db_dir("verify").exit_code == 0
    with Database(db_dir.db) as db:
        ids_after, after = db.vectors.stored(db.model_id, db.setting("embedding_dim"))
    assert list(ids_after) == list(ids)
    np.testing.assert_allclose(after, before, atol=1e-5)  # the same model, the same image
    assert _answer(db_dir, QUERIES / "recapture-he-tissue-b.jpg")["specimen"] == "he-tissue-b"


@pytest.mark.parametrize("damage, named", [
    (lambda v: v[:-1], "embedding has 1279 values, not 1280"),
    (lambda v: np.where(np.arange(len(v)) == 3, np.nan, v), "embedding holds NaN or infinite values"),
    (lambda v: v * 2, "embedding is not unit length (norm 2.0000)"),
])
def test_damaged_embedding_is_named_and_recomputed(db_dir, damage, named):
    capture = _capture(db_dir.db, "fluo-nuclei-c")
    with Database(db_dir.db) as db:
        blob = db.db.execute("SELECT vector FROM embeddings WHERE capture_id = ?", [capture["id"]]).fetchone()[0]
    damaged = damage(np.frombuffer(blob, np.float32)).astype(np.float32)
    _sql(db_dir.db, "UPDATE embeddings SET vector = ? WHERE capture_id = ?", [damaged.tobytes(), capture["id"]])
    result = db_dir("verify")
    assert result.exit_code == 1
    assert f"problem: capture {capture['uuid']} of 'fluo-nuclei-c': {named}" in result.output
    assert db_dir("repair").exit_code == 0
    assert db_dir("verify").exit_code == 0


def test_embedding_of_another_model_is_dropped(db_dir):
    capture = _capture(db_dir.db)
    _sql(db_dir.db, "INSERT INTO embeddings VALUES (?, 'other-model', ?)",
         [capture["id"], np.ones(4, np.float32).tobytes()])
    assert "stray embedding of another model (other-model)" in db_dir("verify").output
    result = db_dir("repair")
    assert "dropped 1 embedding(s) of another model" in result.output
    assert db_dir("verify").exit_code == 0


def test_stale_missing_and_corrupt_index_are_noticed_and_rebuilt(run):
    run("enroll", "-s", "he-tissue-a", SPECIMENS / "he-tissue-a" / "capture-1.png")
    old = run.db.parent / "old.faiss"
    shutil.copy(run.db / "index.faiss", old)
    run("enroll", "-s", "he-tissue-b", SPECIMENS / "he-tissue-b" / "capture-1.png")
    for damage, named in [(lambda p: shutil.copy(old, p), "index.faiss is stale (generation 1"),
                          (lambda p: p.write_bytes(b"specimen-id index 1\n{garbage"), "index.faiss is unreadable"),
                          (lambda p: p.unlink(), "index.faiss is missing")]:
        damage(run.db / "index.faiss")
        result = run("verify")
        # the index is derived: a stale one is rebuilt on the next open, so verify passes
        assert result.exit_code == 0 and f"notice: {named}" in result.output, result.output
        assert "rebuilt index.faiss from the database (2 vectors)" in run("repair").output
        assert run("verify").output.startswith("ok:")
        assert len(FaissIndex.load(run.db / "index.faiss")) == 2


def test_index_that_claims_the_current_generation_but_disagrees_is_a_problem(db_dir):
    path = db_dir.db / "index.faiss"
    index = FaissIndex.load(path)
    index.remove([index.ids()[0]])
    tampered = FaissIndex.build(index.ids(), np.eye(len(index), 1280, dtype=np.float32),
                                 index.generation, index.model_id, 1280)
    tampered.save(path)
    result = db_dir("verify")
    assert result.exit_code == 1
    assert "problem: index.faiss claims generation" in result.output and "holds 7 vectors" in result.output
    index.save(path)  # right count, one id too few: hand-edit the header count too
    with Database(db_dir.db) as db:
        ids, vectors = db.vectors.stored(db.model_id, 1280)
    FaissIndex.build(ids, vectors[::-1], index.generation, index.model_id, 1280).save(path)
    result = db_dir("verify")
    assert result.exit_code == 1
    assert "index.faiss holds other vectors than the database for captures" in result.output
    assert db_dir("repair").exit_code == 0
    assert db_dir("verify").exit_code == 0


def test_orphan_and_temp_files_are_noticed_and_removed(db_dir):
    orphan = db_dir.db / "images" / "ff" / ("f" * 64 + ".png")
    orphan.parent.mkdir(exist_ok=True)
    shutil.copy(SPECIMENS / "he-tissue-a" / "capture-1.png", orphan)
    temp = db_dir.db / "images" / "ff" / ".abc.png.x1y2.tmp"
    temp.write_bytes(b"half")
    index_temp = db_dir.db / ".index.faiss.q9.tmp"
    index_temp.write_bytes(b"half")
    fresh = db_dir.db / "images" / "ff" / ("e" * 64 + ".png")
    fresh.write_bytes(b"a query may be writing this")
    for path in (orphan, temp, index_temp):
        os.utime(path, (LONG_AGO, LONG_AGO))
    result = db_dir("verify")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert f"notice: images/ff/{orphan.name}: image file no capture or query refers to" in lines
    assert "notice: images/ff/.abc.png.x1y2.tmp: temporary file left by an interrupted write" in lines
    assert "notice: .index.faiss.q9.tmp: temporary file left by an interrupted write" in lines
    assert lines[-1].endswith("; 4 notice(s)")
    result = db_dir("repair")
    assert result.exit_code == 0
    assert not orphan.exists() and not temp.exists() and not index_temp.exists()
    assert fresh.exists() and "kept 1 unreferenced file(s) younger than 60 s" in result.output
    assert db_dir("verify").output.endswith("; 1 notice(s)\n")


def test_rows_pointing_nowhere_are_named(db_dir):
    conn = sqlite3.connect(db_dir.db / "specimens.sqlite")  # foreign keys off: as an old tool would
    with conn:
        conn.execute("DELETE FROM specimens WHERE name = 'brightfield-a'")
    conn.close()
    result = db_dir("verify")
    assert result.exit_code == 1
    assert "refers to a missing specimens row" in result.output
    result = db_dir("repair")
    assert result.exit_code == 1 and "cannot fix: specimens.sqlite: row" in result.output


def test_damaged_sqlite_file_is_reported(db_dir):
    path = db_dir.db / "specimens.sqlite"
    Database(db_dir.db).close()  # checkpoint: everything in the main file
    data = bytearray(path.read_bytes())
    page = 4096
    data[2 * page + 100: 3 * page] = os.urandom(page - 100)  # scribble over the third page
    path.write_bytes(bytes(data))
    result = db_dir("verify")
    assert result.exit_code in (1, 3)
    assert "specimens.sqlite" in result.output and "restore it from a backup" in result.output

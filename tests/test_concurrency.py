"""Several processes on one database: queries (CLI, Python API, the web app's /api/query) keep
answering correctly while another process enrols, readers never use an index that disagrees
with SQLite, and two enrolments either both succeed or one waits and fails clearly."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import QUERIES, SPECIMENS
from fastapi.testclient import TestClient

import specimen_id
from specimen_id.cli import cli
from specimen_id.local_features import FEATURE_VERSION
from specimen_id.models.preprocess import to_rgb8
from specimen_id.simulate import Recapture
from specimen_id.store import Database
from specimen_id.web import create_app

QUERY = QUERIES / "recapture-fluo-nuclei-a.jpg"


def _recaptures(folder, count, seed):
    """`count` new captures in `folder`: simulated re-captures of the two fields no sample
    specimen shows, so they never compete with the samples for a query."""
    from specimen_id import images

    rng = np.random.default_rng(seed)
    sources = sorted(QUERIES.glob("never-enrolled-*.jpg"))
    folder.mkdir(parents=True)
    files = []
    for i in range(count):
        files.append(folder / f"new-{i:02}.jpg")
        files[-1].write_bytes(Recapture().jpeg_bytes(to_rgb8(images.load(sources[i % len(sources)]).pixels), rng))
    return files


def _launch(db, *args, env=None):
    return subprocess.Popen([sys.executable, "-m", "specimen_id.cli", "--db", str(db), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _index_agrees(db_dir) -> bool:
    """Open the database as a reader does and compare its index with the embeddings SQLite
    holds at that index's generation; False when a writer moved on in between (then a reader
    must see the new generation and reload)."""
    with Database(db_dir) as db:
        index = db.vectors.loaded()
        with db.db.atomic():  # one snapshot
            generation = db.generation
            ids, vectors = db.vectors.stored(db.model_id, db.setting("embedding_dim"))
        if index.generation != generation:
            assert db.vectors.loaded().generation >= generation  # the change is seen and the index reloaded
            return False
        assert sorted(index.ids()) == sorted(ids)
        return True


@pytest.fixture
def populated(run):
    result = run("enroll", "--folders", SPECIMENS)
    assert result.exit_code == 0, result.output
    return run.db


def test_queries_answer_correctly_while_another_process_enrols(populated, tmp_path):
    files = _recaptures(tmp_path / "batch", 20, seed=1)
    reader = Database(populated)  # a long-lived reader opened before the enrolment
    client = TestClient(create_app(populated), base_url="http://127.0.0.1")
    # --allow-low-quality: brightened re-captures of bright fields clip; this test is about processes
    writer = _launch(populated, "enroll", "--allow-low-quality", "-s", "batch", *files)
    cli_query = _launch(populated, "query", "--json", QUERY)
    web_answers, checks = [], {"agreed": 0, "moved on": 0}
    while writer.poll() is None:
        response = client.post("/api/query", files={"file": ("q.jpg", QUERY.read_bytes(), "image/jpeg")})
        assert response.status_code == 200, response.text
        web_answers.append(response.json()["specimen"])
        checks["agreed" if _index_agrees(populated) else "moved on"] += 1
        assert next(specimen_id.query(reader, [QUERY]))["specimen"] == "fluo-nuclei-a"
    out, err = writer.communicate()
    assert writer.returncode == 0, err
    out, err = cli_query.communicate()
    assert cli_query.returncode == 0, err
    assert json.loads(out)["specimen"] == "fluo-nuclei-a"
    assert web_answers and set(web_answers) == {"fluo-nuclei-a"}
    assert checks["agreed"] > 0
    # the long-lived reader sees the new captures without being reopened
    assert next(specimen_id.query(reader, [files[0]]))["specimen"] == "batch"
    assert len(reader.vectors.loaded()) == 8 + 20
    assert not reader.verify(FEATURE_VERSION).problems
    print(f"{len(web_answers)} web queries and {sum(checks.values())} index checks during the "
          f"enrolment: {checks}")


def test_two_enrolments_at_once_both_succeed(populated, tmp_path):
    first = _recaptures(tmp_path / "first", 8, seed=2)
    second = _recaptures(tmp_path / "second", 8, seed=3)
    procs = [_launch(populated, "enroll", "--allow-low-quality", "-s", "first", *first),
             _launch(populated, "enroll", "--allow-low-quality", "-s", "second", *second)]
    for proc in procs:
        out, err = proc.communicate()
        assert proc.returncode == 0, err
    with Database(populated) as db:
        assert [len(db.captures(db.specimen(n)["id"])) for n in ("first", "second")] == [8, 8]
        assert len(db.vectors.loaded()) == 8 + 16
        assert not db.verify(FEATURE_VERSION).problems


def test_an_outside_sqlite_writer_makes_enrolment_fail_clearly_with_nothing_stored(populated, tmp_path,
                                                                                   monkeypatch):
    """Another program (the sqlite3 shell, a backup tool) holding SQLite's write lock past
    SPECIMEN_ID_LOCK_TIMEOUT: the enrolment says so in one line, exits 3, and stores nothing."""
    import sqlite3

    files = _recaptures(tmp_path / "late", 2, seed=5)
    before = Database(populated).count("captures")
    outside = sqlite3.connect(populated / "specimens.sqlite", isolation_level=None)
    outside.execute("BEGIN IMMEDIATE")
    try:
        monkeypatch.setenv("SPECIMEN_ID_LOCK_TIMEOUT", "0.5")
        late = CliRunner().invoke(cli, ["--db", str(populated), "enroll", "--allow-low-quality",
                                        "-s", "late", *map(str, files)])
    finally:
        outside.execute("ROLLBACK")
        outside.close()
    assert late.exit_code == 3, late.output
    (line,) = late.stderr.strip().splitlines()
    assert line.startswith(f"error: {populated}: another process is writing (database is locked)")
    assert Database(populated).count("captures") == before
    assert not Database(populated).verify(FEATURE_VERSION).problems
    monkeypatch.delenv("SPECIMEN_ID_LOCK_TIMEOUT")  # and once it is gone, the same enrolment works
    again = CliRunner().invoke(cli, ["--db", str(populated), "enroll", "--allow-low-quality",
                                     "-s", "late", *map(str, files)])
    assert again.exit_code == 0, again.output
    assert Database(populated).count("captures") == before + 2


def test_an_enrolment_that_cannot_get_the_lock_fails_clearly(populated, tmp_path):
    files = _recaptures(tmp_path / "late", 2, seed=4)
    holder = subprocess.Popen(  # another process holding the write lock
        [sys.executable, "-c", "import sys, specimen_id as s\n"
         "db = s.open_database(sys.argv[1])\nwith db.writing():\n    print('held', flush=True)\n"
         "    sys.stdin.read()", str(populated)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    try:
        late = _launch(populated, "enroll", "--allow-low-quality", "-s", "late", *files,
                       env={"SPECIMEN_ID_LOCK_TIMEOUT": "1"})
        out, err = late.communicate()
    finally:
        holder.communicate("")
    assert late.returncode == 3
    assert err.strip() == (f"error: {populated} is being written by another process; waited 1 s "
                           "(set SPECIMEN_ID_LOCK_TIMEOUT to wait longer)")
    result = CliRunner().invoke(cli, ["--db", str(populated), "list"])
    assert "late" not in result.output.split()

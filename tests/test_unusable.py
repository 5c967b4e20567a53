"""Databases this build cannot use are refused with one line and exit 3 before anything is read
or written: a schema written by a newer specimen-id (in a directory, or inside an archive), and
a `--db` URL for a backend this build does not have."""

import sqlite3

import pytest
from click.testing import CliRunner
from conftest import QUERIES, SPECIMENS
from fastapi.testclient import TestClient
from test_backup import _with_database

from specimen_id.cli import cli
from specimen_id.errors import DatabaseUnusable
from specimen_id.store import Database
from specimen_id.store.schema import MIGRATIONS
from specimen_id.web import create_app

NEWER = len(MIGRATIONS) + 88


def _set_version(path, version):
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {version}")
    con.commit()
    con.close()


def _state(path):
    con = sqlite3.connect(path)
    try:
        return (con.execute("SELECT COUNT(*) FROM queries").fetchone()[0],
                con.execute("SELECT name, removed_at FROM specimens ORDER BY id").fetchall())
    finally:
        con.close()


def test_a_newer_schema_is_neither_read_nor_written(enrolled):
    sqlite = enrolled.db / "specimens.sqlite"
    _set_version(sqlite, NEWER)
    before = _state(sqlite)
    expected = f"database schema version {NEWER} is newer than this specimen-id understands ({len(MIGRATIONS)})"
    for args in (("query", QUERIES / "recapture-he-tissue-a.jpg"), ("remove", "he-tissue-a"),
                 ("rename", "he-tissue-a", "x"), ("list",), ("verify",),
                 ("enroll", "-s", "new", SPECIMENS / "he-tissue-a" / "capture-1.png")):
        result = enrolled(*args)
        assert result.exit_code == 3, (args, result.output)
        assert result.stderr.strip().splitlines() == [f"error: {enrolled.db}: {expected}; upgrade specimen-id"], args
    assert _state(sqlite) == before
    client = TestClient(create_app(enrolled.db), base_url="http://127.0.0.1")
    reply = client.get("/api/specimens")
    assert reply.status_code == 503 and expected in reply.json()["error"]


def test_an_archive_of_a_newer_schema_is_not_imported(enrolled, tmp_path):
    archive = tmp_path / "a.tar"
    assert enrolled("export", archive).exit_code == 0
    _with_database(archive, tmp_path / "newer.tar", lambda path: _set_version(path, NEWER))
    result = enrolled("import", tmp_path / "newer.tar", db=tmp_path / "target")
    assert result.exit_code == 3
    assert f"its database schema version {NEWER} is newer than this specimen-id understands" in result.stderr
    assert not (tmp_path / "target").exists() and not list(tmp_path.glob(".target.import-*"))


def test_a_database_url_no_backend_can_serve_is_refused_in_one_line(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.tar").write_bytes(b"")
    for url, line in (
            ("postgresql://user@nosuchhost.invalid:5432/specimens",
             "error: postgresql://user@nosuchhost.invalid:5432/specimens: cannot connect (failed to resolve host "),
            ("postgresql://postgres@/specimens?host=/nonexistent/pg",
             "error: postgresql://postgres@/specimens?host=/nonexistent/pg: cannot connect ("),
            ("mysql://db/x", "error: mysql://db/x: this specimen-id has no backend for mysql:// databases; give a "
                             "database directory or a postgresql:// URL")):
        for args, env in ((("--db", url, "list"), {}), (("query", QUERIES / "recapture-he-tissue-a.jpg"),
                                                        {"SPECIMEN_ID_DB": url}),
                          (("--db", url, "import", "a.tar"), {})):
            result = CliRunner().invoke(cli, [str(a) for a in args], env=env)
            assert result.exit_code == 3 and len(result.stderr.strip().splitlines()) == 1, result.output
            assert result.stderr.startswith(line), result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["a.tar"]  # no folder named postgresql:
    # a password in the URL is never shown, however it is written
    for url, shown in (("postgresql://lab:s3cret@host/specimens", "postgresql://lab:***@host/specimens"),
                       ("postgresql://lab:s3/c@ret@host/specimens", "postgresql://lab:***@host/specimens"),
                       ("postgresql:///specimens?user=lab&password=s3cret&host=/run/pg",
                        "postgresql:///specimens?user=lab&password=***&host=/run/pg"),
                       ("host=/run/pg dbname=specimens password=s3cret", "host=/run/pg dbname=specimens password=***")):
        result = CliRunner().invoke(cli, ["--db", url, "list"])
        assert result.exit_code == 3 and "s3cret" not in result.output, result.output
        assert result.stderr.startswith(f"error: {shown}: "), result.stderr
    # the library's default (SPECIMEN_ID_DB) is refused the same way, keeping the URL's //
    monkeypatch.setenv("SPECIMEN_ID_DB", "postgresql://lab:s3cret@host/specimens")
    with pytest.raises(DatabaseUnusable, match=r"^postgresql://lab:\*\*\*@host/specimens: "):
        Database()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar"]

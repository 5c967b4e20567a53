"""Moving a lab between backends: an archive (archive.py's format) written from a PostgreSQL
database, and one restored into it. Both go through a directory database in a temporary folder,
so that the directory's export and import check everything as they always do; the rows move
between the two unchanged (the schemas match column for column), with their ids, uuids and the
counters that keep ids from being handed out twice."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import numpy as np

from ...errors import SpecimenIdError
from .. import archive as archives
from ..files import image_relpath, managed, write_atomic
from .vectors import FIX_HIDDEN, as_array

# in the order their references need
TABLES = ("settings", "specimens", "captures", "embeddings", "local_features", "queries", "reviews", "audit",
          "watched", "overlaps")
COUNTED = ("specimens", "captures", "queries", "reviews", "audit")  # ids from a counter
IMAGE_KEYS = "SELECT image_key FROM captures UNION SELECT image_key FROM queries WHERE image_key IS NOT NULL"


def export_archive(store, archive, facts: dict, software_version: str) -> dict:
    """An archive of one snapshot of the database (a directory database made from it, then
    archived as the directory's export does); its manifest."""
    from ..database import Database

    # staged beside the archive, as the directory's export stages its file: a whole lab may not
    # fit the system's temporary folder
    with tempfile.TemporaryDirectory(dir=Path(archive).parent, prefix=".specimen-id-export-") as tmp:
        root = Path(tmp) / "db"
        Database(root).close()  # the directory's schema, at its latest version
        con = sqlite3.connect(root / archives.SQLITE)
        try:
            with store.db.atomic():  # one snapshot of every table and image
                for table in TABLES:  # in batches: a lab may not fit in memory
                    for names, rows in store.db.stream(f"SELECT * FROM {_table(table)}"):
                        columns = [n for n in names if n != "hidden"]
                        _insert(con, table, columns, [_to_sqlite(table, dict(zip(names, r)), columns) for r in rows])
                for (key,) in store.db.execute(IMAGE_KEYS).fetchall():
                    write_atomic(managed(root, key), store.blobs.read(key))
                for table in COUNTED:  # ids handed out (and purged since) stay used in the copy
                    con.execute("DELETE FROM sqlite_sequence WHERE name = ?", [table])
                    con.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)",
                                [table, _counter(store, table)])
            con.commit()
        finally:
            con.close()
        with Database(root) as copy:
            return archives.export_archive(copy, archive, facts, software_version, source=store.where)


def import_archive(archive, location) -> dict:
    """Restore an archive (checked whole by the directory's import first) into a new or empty
    PostgreSQL database, in one transaction; its manifest."""
    from . import PostgresStore

    store = PostgresStore(location)  # (an unreachable server is said before any unpacking)
    try:
        _refuse_unless_empty(store)
        staging = store.blobs.root.parent  # (the station's cache: the archive's folder may be read-only)
        staging.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=staging, prefix=".import-") as tmp:
            root = Path(tmp) / "db"
            manifest = archives.import_archive(archive, root)  # migrated to the latest schema
            con = sqlite3.connect(root / archives.SQLITE)
            try:
                _copy_in(store, con, root)
            finally:
                con.close()
    finally:
        store.close()
    return manifest


def _refuse_unless_empty(store) -> None:
    if store.db.execute("SELECT " + " OR ".join(f"EXISTS (SELECT 1 FROM {_table(t)})" for t in TABLES)).fetchone()[0]:
        raise SpecimenIdError(f"{store.where} is not empty: import only into a new or empty database")


def _copy_in(store, con, root: Path) -> None:
    """Every row of a directory database (con) and its images into an empty PostgreSQL one."""
    with store.writing():
        _refuse_unless_empty(store)  # (again, under the lock: another station may have begun)
        with store.unit_of_work():
            for table in TABLES:
                cursor = con.execute(f"SELECT * FROM {_table(table)}")
                columns = [c[0] for c in cursor.description]
                while rows := cursor.fetchmany(1000):  # in batches: a lab may not fit in memory
                    _insert(store.db, table, columns, [_from_sqlite(table, dict(zip(columns, r))) for r in rows])
            for (key,) in con.execute(IMAGE_KEYS).fetchall():
                store.blobs.put((root / image_relpath(key)).read_bytes(), *key.split(".", 1))
            counters = dict(con.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
            for table in COUNTED:  # ids the directory handed out (and purged since) stay used
                top = max(int(counters.get(table) or 0),
                          store.db.execute(f"SELECT COALESCE(MAX(id), 0) FROM {_table(table)}").fetchone()[0])
                if top:
                    store.db.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), ?)", [top])
            store.db.execute(FIX_HIDDEN)
        store.vectors.sync(rebuild=True)


def _counter(store, table: str) -> int:
    """The last id a table's counter handed out (0 for none)."""
    sequence = store.db.execute("SELECT pg_get_serial_sequence(?, 'id')", [table]).fetchone()[0]
    value, called = store.db.execute(f"SELECT last_value, is_called FROM {sequence}").fetchone()
    return int(value) if called else 0


def _to_sqlite(table: str, row: dict, columns: list[str]) -> list:
    if table == "embeddings":
        row["vector"] = as_array(row["vector"]).tobytes()
    return [row[c] for c in columns]


def _from_sqlite(table: str, row: dict) -> list:
    if table == "embeddings":
        row["vector"] = np.frombuffer(row["vector"], np.float32)
    return list(row.values())


def _insert(con, table: str, columns: list[str], rows: list) -> None:
    """(either database's connection: both take `?` and quoted names)"""
    if rows:
        con.executemany(f"INSERT INTO {_table(table)} ({', '.join(map(_table, columns))}) VALUES "
                        f"({', '.join('?' * len(columns))})", rows)


def _table(name: str) -> str:
    return f'"{name}"'  # quoted: `overlaps` and `user` are keywords of PostgreSQL

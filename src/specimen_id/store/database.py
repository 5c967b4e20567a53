"""The database directory: SQLite (source of truth), managed image copies, the derived FAISS
index, and the write lock that serialises writers across processes.

    specimen-db/
      specimens.sqlite      specimens, captures, embeddings (float32 blobs), settings, queries
      index.faiss           rebuilt from the stored embeddings when missing or stale
      images/ab/<sha256>.*  content-addressed copies of enrolled and queried images
      write.lock            held by whoever writes

This class is the directory backend of the protocols in store/__init__.py; its units of work
and write lock are in transactions.py.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
import weakref
from pathlib import Path

from ..errors import (
    DatabaseDamaged,
    DatabaseLocked,
    DatabaseUnusable,
    storage_failure,
)
from . import renditions
from .audit import Audit
from .captures import Captures
from .curation import Curation
from .embeddings import DirectoryVectors, Reembedding, SharedIndex
from .files import FileBlobs, content_key, tree_size
from .location import default_location, no_backend
from .overlaps import Overlaps
from .querylog import QueryLog
from .records import CaptureRecord
from .removal import Removal
from .schema import MIGRATIONS, migrate, schema_version
from .settings import Settings
from .transactions import WRITES, Transactions, authorizer, lock_timeout
from .watched import Watched


def database_dir(location) -> Path:
    """The directory a --db value names; a URL or a connection string is refused before
    anything is created (a folder named `postgresql:` helps nobody)."""
    no_backend(location)
    return Path(location)


class Database(Transactions, Settings, Captures, Curation, Removal, Audit, Watched, Reembedding, QueryLog, Overlaps):
    def __init__(self, root: str | os.PathLike | None = None, shared_index: SharedIndex | None = None):
        """Open (creating or migrating) the database at root; databases opened with one
        `shared_index` (the service's, one per thread) search one loaded index."""
        import sqlite_utils

        self.root = database_dir(root if root is not None else default_location())
        if self.root.exists() and not self.root.is_dir():
            raise DatabaseDamaged(f"{self.root} is a file, not a database directory")
        self.root.mkdir(parents=True, exist_ok=True)
        self._shared = shared_index or SharedIndex()
        self.vectors = DirectoryVectors(self, self._shared)
        self.blobs = FileBlobs(self.root)
        self._lock = None
        self._writers = 0  # writing() depth in this object
        self._pending: list = []  # (on commit, on rollback) of the open transaction, in order
        deadline = time.monotonic() + lock_timeout()
        while True:
            try:
                conn = self._connect()
                break
            except sqlite3.DatabaseError as e:
                # SQLite answers "locked" at once, without its busy wait, where waiting could
                # deadlock (stations opening a new database together: one turns it to WAL while
                # another reads it); a moment later it is free
                if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                    if time.monotonic() < deadline:
                        time.sleep(random.uniform(0.02, 0.08))  # (apart: openers that met do not meet again)
                        continue
                    raise self._locked(e) from None
                # a full, read-only or failing disk is not damage: no backup to restore for that
                raise storage_failure(e, self.root) or DatabaseDamaged(
                    f"{self.root / 'specimens.sqlite'} cannot be opened ({e}); restore it from a backup") from None
        self.db = sqlite_utils.Database(conn)
        self._writes_allowed = 0
        # after migrating: from here on, writes are units of work. Through a weak reference, so
        # that the connection closes as soon as this object goes (a thread's store, its thread)
        conn.set_authorizer(authorizer(weakref.ref(self)))

    def _connect(self) -> sqlite3.Connection:
        """The connection, in WAL mode, with the schema brought up to date."""
        # SQLite's own wait for another connection's write (an outside tool, a query being
        # logged): as long as the write lock's, one setting for "wait for other writers"
        conn = sqlite3.connect(self.root / "specimens.sqlite", timeout=lock_timeout())
        try:
            version = schema_version(conn)
            if version > len(MIGRATIONS):  # written by a newer specimen-id: neither read nor write it
                raise DatabaseUnusable(f"{self.root}: database schema version {version} is newer than "
                                       f"this specimen-id understands ({len(MIGRATIONS)}); upgrade specimen-id")
            conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            conn.execute("PRAGMA foreign_keys=ON")
            if version < len(MIGRATIONS):
                with self.writing():  # one process migrates; the others then find it done
                    migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def location(self) -> Path:
        """What opens this store again (open_store)."""
        return self.root

    @property
    def shared_index(self) -> SharedIndex:
        """The loaded index this store searches, shared by the stores opened with it."""
        return self._shared

    @property
    def where(self) -> str:
        """The store as messages name it."""
        return str(self.root)

    # -- its units of work (transactions.py): a file lock, SQLite's write lock -------------------

    def _write_lock(self):
        from filelock import FileLock

        if self._lock is None:
            self._lock = FileLock(str(self.root / "write.lock"))
        return self._lock

    def _begin(self) -> None:
        """A write transaction that takes SQLite's write lock when it begins (BEGIN IMMEDIATE),
        waiting for it up to the busy timeout. sqlite-utils' atomic() begins a deferred one:
        when it reads first (insert() reads the table's columns) and another process commits
        before its first write (a query being logged), SQLite fails it at once with "database
        is locked" instead of waiting."""
        try:
            self.db.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:  # another writer held on past the busy timeout
            raise self._locked(e) from None

    def _locked(self, e: sqlite3.OperationalError) -> DatabaseLocked:
        """Another process held SQLite's lock past the busy timeout: not damage, only a wait."""
        return DatabaseLocked(f"{self.root}: another process is writing ({e}); try again when it is done")

    def _hold_log(self) -> None:
        """Nothing to do: BEGIN IMMEDIATE already keeps every other writer out (a query being
        logged included) until this transaction ends."""

    def _authorize(self, action, table, *_):
        """SQLite asks before it prepares each statement: a change to a table outside a unit of
        work is refused ("not authorized"), whichever code path issued it."""
        if action in WRITES and not self._writes_allowed and not (table or "").startswith("sqlite_"):
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the directory's own part of the catalog --------------------------------------------

    def _keep(self, record: CaptureRecord) -> str:
        """Keep a record's file as a blob, to be deleted again if this unit of work rolls back
        and it was new (and nothing else has come to refer to it meanwhile)."""
        key = content_key(record.file_sha256, record.extension)
        if not self.blobs.file(key).exists():
            self.after_rollback(lambda: self._delete_unreferenced_images({key}))
        return self.blobs.put(record.data, record.file_sha256, record.extension)

    # -- looking after it: backup, CSV, verify, repair, summary ----------------------------

    def export_archive(self, archive, facts: dict, software_version: str) -> dict:
        """A backup archive of a consistent snapshot (archive.py), its manifest saying `facts`
        (what the caller's stored settings mean) and which software wrote it; returns it."""
        from .archive import export_archive

        return export_archive(self, archive, facts, software_version)

    @staticmethod
    def import_archive(archive, location) -> dict:
        """Restore an archive into a new or empty database directory; returns its manifest."""
        from .archive import import_archive

        return import_archive(archive, location)

    def verify(self, feature_version: str):
        """Every finding about what is stored (integrity.py); local features of another recipe
        than `feature_version` count as stale."""
        from .integrity import verify

        return verify(self, feature_version)

    def clean(self, found, rgb8) -> tuple[list[str], list[str]]:
        """Repair's part in the files verify found: renditions made again (`rgb8` decodes an
        image), leftovers removed. Returns (what was fixed, what was not)."""
        from .integrity import remove_leftovers

        return remove_leftovers(self, found, rgb8)

    # -- summary --------------------------------------------------------------------------

    def info(self) -> dict:
        index = self.vectors.loaded()
        return {
            "path": str(self.root.resolve()),
            **self.active_counts(), "queries": self.count("queries"),
            "model_id": self.model_id, "model": self.setting("model_name"),
            "features_version": self.setting("features_version"),
            "index_vectors": len(index) if index is not None else 0,
            "index_kind": index.kind if index is not None else None,
            "index_generation": self.generation,
            "bytes": {"sqlite": tree_size(self.root / "specimens.sqlite"),
                      "index": tree_size(self.vectors.path), "images": tree_size(self.root / "images"),
                      "renditions": tree_size(self.root / renditions.FOLDER)},
        }

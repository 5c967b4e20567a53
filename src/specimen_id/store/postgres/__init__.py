"""The PostgreSQL backend: one database that many microscope stations share, by a libpq URL
(`postgresql://user@host:5432/specimens`, `postgresql:///specimens?host=/run/pg`; PGPASSWORD,
~/.pgpass and PGSERVICE work as libpq has them). Rows as the directory keeps them (the shared
catalog code runs on both), vectors in pgvector (vectors.py), images in the database (blobs.py).

Writers serialise on a session advisory lock, as the directory's do on its lock file: a
station killed mid-write loses its connection, and the server rolls its transaction back and
lets the lock go. Outside a unit of work the session is read-only, so that no write can escape
one. Needs `pip install 'specimen-id[postgres]'` (psycopg, pgvector)."""

from __future__ import annotations

import time
from contextlib import contextmanager

from ...errors import DatabaseUnusable
from ..audit import Audit
from ..captures import Captures
from ..curation import Curation
from ..embeddings import Reembedding
from ..location import redacted
from ..overlaps import Overlaps
from ..querylog import QueryLog
from ..records import CaptureRecord
from ..removal import Removal
from ..settings import Settings
from ..transactions import Transactions
from ..watched import Watched

WRITE_LOCK = 0x5bec1de1  # the advisory lock every writer of one database takes
POLL_S = 0.05


# What libpq is told unless the URL says otherwise: TCP keepalives both ways (`options` sets the
# server's side for this session), so that a station that loses power or its network while it
# holds the write lock is noticed within about a minute instead of the system's two hours, and
# its lock let go; and a station notices a server that went away.
DEFAULTS = {"application_name": "specimen-id", "keepalives": "1", "keepalives_idle": "30",
            "keepalives_interval": "10", "keepalives_count": "3",
            "options": "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3"}


def connection_defaults(url: str) -> dict:
    from psycopg.conninfo import conninfo_to_dict

    try:
        given = conninfo_to_dict(url)
    except Exception:  # unparsable: libpq says so when connecting
        given = {}
    return {k: v for k, v in DEFAULTS.items() if k not in given}


class AdvisoryLock:
    """The database's write lock: a session advisory lock, polled up to a timeout."""

    def __init__(self, connection):
        self.connection = connection

    def acquire(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.connection.execute("SELECT pg_try_advisory_lock(?)", [WRITE_LOCK]).fetchone()[0]:
            if time.monotonic() >= deadline:
                raise TimeoutError
            time.sleep(POLL_S)

    def release(self) -> None:
        self.connection.execute("SELECT pg_advisory_unlock(?)", [WRITE_LOCK])


class PostgresStore(Transactions, Settings, Captures, Curation, Removal, Audit, Watched, Reembedding, QueryLog,
                    Overlaps):
    def __init__(self, location, shared_index=None):
        try:
            import psycopg
            from pgvector.psycopg import register_vector
        except ImportError:
            raise DatabaseUnusable(f"{redacted(str(location))}: PostgreSQL databases need psycopg and pgvector: "
                                   "pip install 'specimen-id[postgres]'") from None
        from .blobs import PgBlobs
        from .connection import Connection, conninfo_secret, scrubbed
        from .schema import migrate
        from .vectors import PgVectors

        self.url = str(location).strip()
        self._where = redacted(self.url)
        secret = conninfo_secret(self.url)
        try:
            pg = psycopg.connect(self.url, autocommit=True, **connection_defaults(self.url))
        except psycopg.Error as e:
            raise DatabaseUnusable(f"{self._where}: cannot connect ({scrubbed(e, secret)}); check the server, "
                                   "the URL and the credentials (PGPASSWORD, ~/.pgpass)") from None
        self.db = Connection(pg, self._where, secret)
        self._shared = shared_index
        self._writers = 0
        self._pending: list = []
        self._writes_allowed = 0
        try:
            migrate(self.db, self._where)
            register_vector(pg)
            # outside a unit of work nothing may write (as the directory's authorizer has it)
            pg.execute("SET default_transaction_read_only = on")
            # an index scan that yields fewer than k (IVF's probed lists, HNSW's ef_search) goes on
            # scanning instead of returning fewer hits
            pg.execute("SET hnsw.iterative_scan = relaxed_order")
            pg.execute("SET ivfflat.iterative_scan = relaxed_order")
        except BaseException:
            pg.close()
            raise
        self._lock = AdvisoryLock(self.db)
        self.vectors = PgVectors(self)
        self.blobs = PgBlobs(self, f"{pg.info.host}:{pg.info.port}/{pg.info.dbname}")

    @property
    def location(self) -> str:
        return self.url

    @property
    def where(self) -> str:
        """The database as messages name it: its URL without the password."""
        return self._where

    @property
    def shared_index(self):
        return self._shared  # (the server holds the index: nothing is loaded here to share)

    def close(self) -> None:
        self.db.pg.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- its units of work (transactions.py) ----------------------------------------------

    def _write_lock(self) -> AdvisoryLock:
        return self._lock

    def _begin(self) -> None:
        self.db.execute("BEGIN READ WRITE")

    @contextmanager
    def writable(self):
        """The session may write outside a unit of work meanwhile: for what cannot run inside a
        transaction (an index built CONCURRENTLY), under the write lock."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("SET default_transaction_read_only = off")
        try:
            yield
        finally:
            self.db.execute("SET default_transaction_read_only = on")

    def _hold_log(self) -> None:
        """Keep queries and reviews being logged out until this transaction ends, as SQLite's
        BEGIN IMMEDIATE does: they are logged without the write lock, and a rename or merge
        rewrites them (their specimen, the names among their candidates). One being logged now
        finishes first, so that what follows sees it; one begun after waits for the commit."""
        self.db.execute("LOCK TABLE queries, reviews IN SHARE MODE")

    def _keep(self, record: CaptureRecord) -> str:
        """A record's file, kept as a row of the same transaction (a rollback takes it too)."""
        return self.blobs.put(record.data, record.file_sha256, record.extension)

    # -- looking after it -----------------------------------------------------------------

    def export_archive(self, archive, facts: dict, software_version: str) -> dict:
        from .transfer import export_archive

        return export_archive(self, archive, facts, software_version)

    @staticmethod
    def import_archive(archive, location) -> dict:
        from .transfer import import_archive

        return import_archive(archive, location)

    def verify(self, feature_version: str):
        from .integrity import verify

        return verify(self, feature_version)

    def clean(self, found, rgb8) -> tuple[list[str], list[str]]:
        from .integrity import clean

        return clean(self, found, rgb8)

    def info(self) -> dict:
        size = self.db.execute(  # (the index is the embeddings table's)
            "SELECT COALESCE(SUM(pg_total_relation_size(t)) FILTER (WHERE t <> 'blobs'::regclass), 0), "
            "pg_total_relation_size('blobs'::regclass) FROM unnest(ARRAY['specimens', 'captures', "
            "'embeddings', 'settings', 'queries', 'local_features', 'reviews', 'audit', 'watched', "
            "'\"overlaps\"', 'blobs']::regclass[]) t"
        ).fetchone()
        from ..files import tree_size

        return {
            "path": self.where,
            **self.active_counts(), "queries": self.count("queries"),
            "model_id": self.model_id, "model": self.setting("model_name"),
            "features_version": self.setting("features_version"),
            "index_vectors": self.vectors.searched(),
            "index_kind": self.vectors.describe(),
            "index_generation": self.generation,
            "bytes": {"tables": int(size[0]), "images": int(size[1]), "local copies": tree_size(self.blobs.root)},
        }

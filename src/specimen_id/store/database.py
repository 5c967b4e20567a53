"""The database directory: SQLite (source of truth), managed image copies, the derived FAISS
index, and the write lock that serialises writers across processes.

    specimen-db/
      specimens.sqlite      specimens, captures, embeddings (float32 blobs), settings, queries
      index.faiss           rebuilt from the stored embeddings when missing or stale
      images/ab/<sha256>.*  content-addressed copies of enrolled and queried images
      write.lock            held by whoever writes

This class is the storage interface that indexer and search use; another backend (PostgreSQL
with pgvector) would offer the same methods.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import DatabaseDamaged, DatabaseLocked, ImageRefused, UnknownSpecimen
from .curation import Curation, check_metadata, check_name
from .files import store_image, tree_size
from .schema import MIGRATIONS, migrate, schema_version
from .settings import DEFAULTS, Settings, now
from .vectors import VectorIndex

DB_ENV = "SPECIMEN_ID_DB"
DEFAULT_DIR = "specimen-db"
LOCK_TIMEOUT_ENV = "SPECIMEN_ID_LOCK_TIMEOUT"


def default_path() -> Path:
    return Path(os.environ.get(DB_ENV) or DEFAULT_DIR)


class Database(Settings, Curation):
    def __init__(self, root: str | os.PathLike | None = None):
        import sqlite_utils

        self.root = Path(root) if root is not None else default_path()
        if self.root.exists() and not self.root.is_dir():
            raise DatabaseDamaged(f"{self.root} is a file, not a database directory")
        self.root.mkdir(parents=True, exist_ok=True)
        self._index: VectorIndex | None = None
        self._lock = None
        try:
            conn = sqlite3.connect(self.root / "specimens.sqlite", timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            conn.execute("PRAGMA foreign_keys=ON")
            if schema_version(conn) < len(MIGRATIONS):
                with self.writing():  # one process migrates; the others then find it done
                    migrate(conn)
        except sqlite3.DatabaseError as e:
            raise DatabaseDamaged(f"{self.root / 'specimens.sqlite'} cannot be opened ({e}); "
                                  "restore it from a backup") from None
        self.db = sqlite_utils.Database(conn)

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- locking --------------------------------------------------------------------------

    @contextmanager
    def writing(self):
        """The database's write lock (re-entrant in one process), held across the SQLite
        transactions and the index file write of one operation."""
        from filelock import Timeout

        timeout = float(os.environ.get(LOCK_TIMEOUT_ENV, 60))
        try:
            self._write_lock().acquire(timeout=timeout)
        except Timeout:
            raise DatabaseLocked(f"{self.root} is being written by another process; waited "
                                 f"{timeout:g} s (set {LOCK_TIMEOUT_ENV} to wait longer)") from None
        try:
            yield self
        finally:
            self._lock.release()

    @contextmanager
    def transaction(self):
        """A write transaction that takes SQLite's write lock when it begins (BEGIN IMMEDIATE),
        waiting for it up to the busy timeout. sqlite-utils' atomic() begins a deferred one:
        when it reads first (insert() reads the table's columns) and another process commits
        before its first write (a query being logged), SQLite fails it at once with "database
        is locked" instead of waiting. Nested, it is a savepoint."""
        conn = self.db.conn
        if conn.in_transaction:
            with self.db.atomic():
                yield self
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            with self.db.atomic():  # a savepoint inside it
                yield self
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _write_lock(self):
        from filelock import FileLock

        if self._lock is None:
            self._lock = FileLock(str(self.root / "write.lock"))
        return self._lock

    # -- specimens and captures -----------------------------------------------------------

    def count(self, table: str) -> int:
        return self.db[table].count

    def specimens(self) -> list[dict]:
        return [_decoded(r) for r in self.db.query(
            "SELECT s.*, COUNT(c.id) AS captures FROM specimens s "
            "LEFT JOIN captures c ON c.specimen_id = s.id GROUP BY s.id ORDER BY s.name")]

    def specimen(self, name: str) -> dict:
        rows = list(self.db.query("SELECT * FROM specimens WHERE name = ?", [name]))
        if not rows:
            raise UnknownSpecimen(name)
        return _decoded(rows[0])

    def ensure_specimen(self, name: str, metadata: dict | None = None) -> dict:
        """The named specimen, created if new; metadata given is merged into what it has."""
        if metadata is not None:
            check_metadata(metadata)
        with self.transaction():
            try:
                found = self.specimen(name)
            except UnknownSpecimen:
                check_name(name)
                self.db["specimens"].insert({"uuid": str(uuid.uuid4()), "name": name,
                                             "metadata": json.dumps(metadata or {}),
                                             "created_at": now()})
                return self.specimen(name)
            if metadata:
                merged = {**found["metadata"], **metadata}
                self.db.execute("UPDATE specimens SET metadata = ? WHERE id = ?",
                                [json.dumps(merged), found["id"]])
                found["metadata"] = merged
        return found

    def captures(self, specimen_id: int) -> list[dict]:
        return [_decoded(r) for r in self.db.query(
            "SELECT * FROM captures WHERE specimen_id = ? ORDER BY id", [specimen_id])]

    def capture_files(self) -> list[tuple[int, Path]]:
        """(capture id, managed image path) of every capture."""
        return [(r[0], self.root / r[1]) for r in
                self.db.execute("SELECT id, image_path FROM captures ORDER BY id")]

    def capture_pixels(self, path: Path):
        """Decoded pixels of a managed image; a missing or unreadable one means damage."""
        from .. import images

        try:
            return images.load(path).pixels
        except ImageRefused as e:
            raise DatabaseDamaged(f"managed image {e}; nothing was changed (restore the file "
                                  "or remove its specimen)") from None

    def find_captures(self, file_sha256: str | None = None, pixel_sha256: str | None = None):
        """Enrolled captures with this exact file or these exact pixels, with their specimen."""
        return list(self.db.query(
            "SELECT c.id, c.uuid, c.file_sha256, c.pixel_sha256, s.name AS specimen FROM captures c "
            "JOIN specimens s ON s.id = c.specimen_id WHERE c.file_sha256 = ? OR c.pixel_sha256 = ?",
            [file_sha256, pixel_sha256]))

    def add_captures(self, specimen_name: str, metadata: dict | None, captures, vectors: np.ndarray,
                     model_id: str, features: list[bytes], feature_version: str) -> list[int]:
        """Store captures of a specimen (created if new) with their embeddings and local
        features in one transaction, then update the index."""
        if not captures:
            return []
        self.require_model(model_id)
        index = self.index()
        rows = []
        with self.transaction():
            specimen = self.ensure_specimen(specimen_name, metadata)
            for capture, vector, blob in zip(captures, vectors, features):
                path = store_image(self.root, capture.file_sha256, capture.extension, capture.data)
                cid = self.db["captures"].insert({
                    "uuid": str(uuid.uuid4()), "specimen_id": specimen["id"],
                    "file_sha256": capture.file_sha256, "pixel_sha256": capture.pixel_sha256,
                    "image_path": path, "original_name": os.path.basename(capture.name),
                    "format": capture.format, "width": capture.width, "height": capture.height,
                    "dtype": str(capture.pixels.dtype), "channels": capture.channels,
                    "exif": json.dumps(capture.exif), "created_at": now()}).last_pk
                self.db["embeddings"].insert({"capture_id": cid, "model_id": model_id,
                                              "vector": np.asarray(vector, np.float32).tobytes()})
                self.db["local_features"].insert({"capture_id": cid, "version": feature_version,
                                                  "data": blob})
                rows.append(cid)
            generation = self._bump_generation(model_id, vectors.shape[1])
        if index is not None and index.describes(generation - 1, model_id):
            index.add(rows, vectors)
            index.generation = generation
        else:
            self._index = None
        return rows

    def remove_specimen(self, name: str) -> int:
        """Delete a specimen, its captures and their embeddings; returns the captures removed."""
        specimen = self.specimen(name)
        captures = self.captures(specimen["id"])
        ids = [c["id"] for c in captures]
        index = self.index()
        with self.transaction():
            self.db.execute("UPDATE queries SET specimen_id = NULL WHERE specimen_id = ?",
                            [specimen["id"]])
            self.db.execute("DELETE FROM captures WHERE specimen_id = ?", [specimen["id"]])
            self.db.execute("DELETE FROM specimens WHERE id = ?", [specimen["id"]])
            generation = self._bump_generation(self.model_id, None)
        if index is not None and index.generation == generation - 1:
            index.remove(ids)
            index.generation = generation
        self._delete_unreferenced_images({c["image_path"] for c in captures})
        return len(ids)

    def _delete_unreferenced_images(self, paths: set[str]) -> None:
        """Delete these managed files unless another capture or a logged query still uses
        them (content-addressed files are shared; nothing else in images/ is touched)."""
        for path in paths:
            used = self.db.execute("SELECT 1 FROM captures WHERE image_path = ? UNION ALL "
                                   "SELECT 1 FROM queries WHERE image_path = ?", [path, path])
            if used.fetchone() is None:
                (self.root / path).unlink(missing_ok=True)

    # -- embeddings and the index ---------------------------------------------------------

    def _bump_generation(self, model_id, dim) -> int:
        """Inside a write transaction: the embedding set changed, so every index file made
        before is stale."""
        generation = self.generation + 1
        self._put_setting("index_generation", generation)
        if model_id:
            self._put_setting("model_id", model_id)
        if dim:
            self._put_setting("embedding_dim", int(dim))
        return generation

    def embeddings(self, model_id: str, dim: int):
        """(ids, vectors) of every capture embedded with this model: (n,) and (n, dim)."""
        rows = self.db.execute("SELECT capture_id, vector FROM embeddings WHERE model_id = ? "
                               "ORDER BY capture_id", [model_id]).fetchall()
        ids = np.array([r[0] for r in rows], np.int64)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), np.float32)
        return ids, vectors.reshape(len(rows), dim)

    def replace_embeddings(self, model_id: str, ids, vectors: np.ndarray, features: list[bytes],
                           feature_version: str, model_name: str, weights: Path | None) -> None:
        """Switch the database to new embeddings, local features and the model that made
        them, in one transaction."""
        with self.transaction():
            self._put_model(model_name, weights)
            self.db.execute("DELETE FROM embeddings")
            self.db.execute("DELETE FROM local_features")
            self.db["embeddings"].insert_all(
                {"capture_id": int(i), "model_id": model_id, "vector": v.tobytes()}
                for i, v in zip(ids, np.asarray(vectors, np.float32)))
            self.db["local_features"].insert_all(
                {"capture_id": int(i), "version": feature_version, "data": blob}
                for i, blob in zip(ids, features))
            self._bump_generation(model_id, vectors.shape[1] if len(vectors) else None)
        self._index = None

    def restore_vectors(self, model_id: str, ids, vectors: np.ndarray, features: list[bytes],
                        feature_version: str) -> None:
        """Put recomputed embeddings and local features of some captures in place of whatever
        they had, and drop embeddings of any other model, in one transaction (repair; call
        under `writing()`)."""
        marks = ",".join("?" * len(ids))
        ids = [int(i) for i in ids]
        with self.transaction():
            self.db.execute(f"DELETE FROM embeddings WHERE capture_id IN ({marks})", ids)
            self.db.execute(f"DELETE FROM local_features WHERE capture_id IN ({marks})", ids)
            self.db.execute("DELETE FROM embeddings WHERE model_id != ?", [model_id])
            self.db["embeddings"].insert_all(
                {"capture_id": i, "model_id": model_id, "vector": v.tobytes()}
                for i, v in zip(ids, np.asarray(vectors, np.float32)))
            self.db["local_features"].insert_all(
                {"capture_id": i, "version": feature_version, "data": blob}
                for i, blob in zip(ids, features))
            self._bump_generation(model_id, vectors.shape[1])
        self._index = None

    def rebuild_index(self) -> VectorIndex | None:
        """Build the index from the stored embeddings whatever the file says, and save it
        (call under `writing()`)."""
        self._index = self._rebuild_index() if self.model_id else None
        return self._index

    def index(self) -> VectorIndex | None:
        """The FAISS index matching the database now: the saved file if its generation and
        model agree with SQLite, else rebuilt from the stored embeddings (and saved when no
        other process holds the write lock). None while nothing is enrolled."""
        generation, model_id = self.generation, self.model_id
        if self._index is not None and self._index.describes(generation, model_id):
            return self._index
        if not model_id:
            return None
        index = VectorIndex.load(self.index_path)
        if index is None or not index.describes(generation, model_id):
            index = self._rebuild_index()
        self._index = index
        return index

    def _rebuild_index(self) -> VectorIndex:
        with self.db.atomic():  # one snapshot: the generation and the vectors it counts
            generation, model_id = self.generation, self.model_id
            dim = int(self.setting("embedding_dim", 1))
            ids, vectors = self.embeddings(model_id, dim)
        index = VectorIndex.build(ids, vectors, generation, model_id, dim)
        from filelock import Timeout

        try:
            with self._write_lock().acquire(timeout=0):
                if self.generation == generation:
                    index.save(self.index_path)
        except Timeout:
            pass  # another process is writing; it saves its own index when done
        return index

    def save_index(self) -> None:
        """Write the current index file (call under `writing()`, after a change)."""
        index = self.index()
        if index is not None:
            index.save(self.index_path)

    @property
    def index_path(self) -> Path:
        return self.root / "index.faiss"

    def search(self, vectors: np.ndarray, k: int):
        """Nearest captures for each vector: (scores, capture ids), both (n, k')."""
        index = self.index()
        if index is None or not len(index):
            return np.empty((len(vectors), 0), np.float32), np.empty((len(vectors), 0), np.int64)
        return index.search(vectors, k)

    def local_features(self, ids, version: str) -> dict[int, bytes]:
        """capture id -> stored local features of that version."""
        ids = [int(i) for i in ids]
        marks = ",".join("?" * len(ids))
        return dict(self.db.execute(
            f"SELECT capture_id, data FROM local_features WHERE version = ? AND capture_id IN ({marks})",
            [version, *ids]).fetchall()) if ids else {}

    def capture_owners(self, ids) -> dict[int, dict]:
        """capture id -> {capture uuid, specimen name, specimen id}."""
        ids = [int(i) for i in ids if i >= 0]
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        return {r["id"]: r for r in self.db.query(
            f"SELECT c.id, c.uuid, s.name AS specimen, s.id AS specimen_id FROM captures c "
            f"JOIN specimens s ON s.id = c.specimen_id WHERE c.id IN ({marks})", ids)}

    # -- query log ------------------------------------------------------------------------

    def log_query(self, result: dict, capture, model_id: str, threshold: float, top_k: int,
                  software_version: str, score_kind: str = "cosine") -> str:
        image_path = store_image(self.root, capture.file_sha256, capture.extension, capture.data)
        specimen_id = None
        if result.get("specimen"):
            specimen_id = self.specimen(result["specimen"])["id"]
        query_uuid = str(uuid.uuid4())
        with self.transaction():
            self.db["queries"].insert({
                "uuid": query_uuid, "created_at": now(), "query_name": result["query"],
                "file_sha256": capture.file_sha256, "pixel_sha256": capture.pixel_sha256,
                "image_path": image_path, "model_id": model_id, "threshold": threshold,
                "score_kind": score_kind, "top_k": top_k, "decision": result["decision"],
                "specimen_id": specimen_id, "score": result["score"],
                "candidates": json.dumps(result["candidates"]),
                "software_version": software_version})
        return query_uuid

    def queries(self, limit: int = 100, specimen_id: int | None = None) -> list[dict]:
        """Logged queries, newest first (only those decided for one specimen, if given)."""
        where = "WHERE q.specimen_id = ?" if specimen_id is not None else ""
        params = [specimen_id] if specimen_id is not None else []
        return [_decoded(r) for r in self.db.query(
            f"SELECT q.*, s.name AS specimen, {_LATEST_REVIEW} FROM queries q LEFT JOIN specimens s "
            f"ON s.id = q.specimen_id {where} ORDER BY q.id DESC LIMIT ?", [*params, limit])]

    def image_of(self, kind: str, uuid_: str) -> Path:
        """The managed image of a capture or a logged query, found by its UUID (never by a
        path from outside, so nothing outside the database directory can be named)."""
        table = {"capture": "captures", "query": "queries"}[kind]
        row = self.db.execute(f"SELECT image_path FROM {table} WHERE uuid = ?", [uuid_]).fetchone()
        if row is None or row[0] is None:
            raise KeyError(uuid_)
        return self.root / row[0]

    def logged_query(self, uuid_: str) -> dict:
        rows = [_decoded(r) for r in self.db.query(
            f"SELECT q.*, s.name AS specimen, {_LATEST_REVIEW} FROM queries q LEFT JOIN specimens s "
            "ON s.id = q.specimen_id WHERE q.uuid = ?", [uuid_])]
        if not rows:
            raise KeyError(uuid_)
        return rows[0]

    # -- summary --------------------------------------------------------------------------

    def info(self) -> dict:
        index = self.index()
        return {
            "path": str(self.root.resolve()),
            "specimens": self.count("specimens"), "captures": self.count("captures"),
            "queries": self.count("queries"),
            "model_id": self.model_id, "model": self.setting("model_name"),
            "settings": {key: self.setting(key) for key in DEFAULTS},
            "index_vectors": len(index) if index is not None else 0,
            "index_generation": self.generation,
            "bytes": {"sqlite": tree_size(self.root / "specimens.sqlite"),
                      "index": tree_size(self.index_path), "images": tree_size(self.root / "images")},
        }


# the latest review of a query as JSON (NULL when nobody reviewed it)
_LATEST_REVIEW = ("(SELECT json_object('verdict', r.verdict, 'reviewer', r.reviewer, 'at', r.created_at) "
                  "FROM reviews r WHERE r.query_id = q.id ORDER BY r.id DESC LIMIT 1) AS review")


def _decoded(row: dict) -> dict:
    """JSON columns back to Python values."""
    for key in ("metadata", "exif", "candidates", "review"):
        if isinstance(row.get(key), str):
            row[key] = json.loads(row[key])
    return row

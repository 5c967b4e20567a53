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

import json
import os
import sqlite3
import uuid
import weakref
from pathlib import Path

import numpy as np

from ..errors import (
    DatabaseDamaged,
    DatabaseUnusable,
    SpecimenRemoved,
    UnknownSpecimen,
    storage_failure,
)
from . import renditions
from .audit import Audit
from .curation import Curation, check_metadata, check_name
from .embeddings import DirectoryVectors, Reembedding, SharedIndex
from .files import FileBlobs, content_key, tree_size
from .location import default_location, no_backend
from .overlaps import Overlaps
from .querylog import QueryLog, decoded
from .records import CaptureRecord
from .removal import Removal
from .schema import MIGRATIONS, migrate, schema_version
from .settings import Settings, now
from .transactions import Transactions, authorizer, lock_timeout
from .watched import Watched


def database_dir(location) -> Path:
    """The directory a --db value names; a URL or a connection string is refused before
    anything is created (a folder named `postgresql:` helps nobody)."""
    no_backend(location)
    return Path(location)


class Database(Transactions, Settings, Curation, Removal, Audit, Watched, Reembedding, QueryLog, Overlaps):
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
        try:
            # SQLite's own wait for another connection's write (an outside tool, a query being
            # logged): as long as the write lock's, one setting for "wait for other writers"
            conn = sqlite3.connect(self.root / "specimens.sqlite", timeout=lock_timeout())
            version = schema_version(conn)
            if version > len(MIGRATIONS):  # written by a newer specimen-id: neither read nor write it
                conn.close()
                raise DatabaseUnusable(f"{self.root}: database schema version {version} is newer than "
                                       f"this specimen-id understands ({len(MIGRATIONS)}); upgrade specimen-id")
            conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            conn.execute("PRAGMA foreign_keys=ON")
            if version < len(MIGRATIONS):
                with self.writing():  # one process migrates; the others then find it done
                    migrate(conn)
        except sqlite3.DatabaseError as e:
            # a full, read-only or failing disk is not damage: no backup to restore for that
            raise storage_failure(e, self.root) or DatabaseDamaged(
                f"{self.root / 'specimens.sqlite'} cannot be opened ({e}); restore it from a backup") from None
        self.db = sqlite_utils.Database(conn)
        self._writes_allowed = 0
        # after migrating: from here on, writes are units of work. Through a weak reference, so
        # that the connection closes as soon as this object goes (a thread's store, its thread)
        conn.set_authorizer(authorizer(weakref.ref(self)))

    @property
    def location(self) -> Path:
        """What opens this store again (open_store)."""
        return self.root

    @property
    def shared_index(self) -> SharedIndex:
        """The loaded index this store searches, shared by the stores opened with it."""
        return self._shared

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- specimens and captures -----------------------------------------------------------

    def count(self, table: str) -> int:
        return self.db[table].count

    def specimens(self) -> list[dict]:
        """Every specimen not removed, with its number of captures and the uuid of its first
        (its cover), in one query."""
        return [decoded(r) for r in self.db.query(
            "SELECT s.*, COUNT(c.id) AS captures, (SELECT uuid FROM captures WHERE specimen_id = s.id "
            "ORDER BY id LIMIT 1) AS cover FROM specimens s LEFT JOIN captures c "
            "ON c.specimen_id = s.id WHERE s.removed_at IS NULL GROUP BY s.id ORDER BY s.name")]

    def specimen(self, name: str, removed: bool = False) -> dict:
        """The named specimen; a removed one only when asked for (else SpecimenRemoved). Its
        uuid serves as its name too: a name that cannot be typed (from before names were
        checked) can still be reached to rename it."""
        rows = list(self.db.query("SELECT * FROM specimens WHERE name = ?", [name])) or list(
            self.db.query("SELECT * FROM specimens WHERE uuid = ?", [name]))
        if not rows:
            raise UnknownSpecimen(name)
        if rows[0]["removed_at"] is not None and not removed:
            raise SpecimenRemoved(name)
        return decoded(rows[0])

    def ensure_specimen(self, name: str, metadata: dict | None = None) -> dict:
        """The named specimen, created if new; metadata given is merged into what it has."""
        if metadata is not None:
            check_metadata(metadata)
        with self.unit_of_work():
            try:
                found = self.specimen(name)
            except SpecimenRemoved:
                raise
            except UnknownSpecimen:
                check_name(name)
                self.db["specimens"].insert({"uuid": str(uuid.uuid4()), "name": name,
                                             "metadata": json.dumps(metadata or {}),
                                             "created_at": now()})
                created = self.specimen(name)
                self._audit("create", created, after={"metadata": created["metadata"]})
                return created
            merged = {**found["metadata"], **(metadata or {})}
            if merged != found["metadata"]:
                self.db.execute("UPDATE specimens SET metadata = ? WHERE id = ?",
                                [json.dumps(merged), found["id"]])
                self._audit("edit", found, before={"metadata": found["metadata"]},
                            after={"metadata": merged})
                found["metadata"] = merged
        return found

    def captures(self, specimen_id: int) -> list[dict]:
        return [decoded(r) for r in self.db.query(
            "SELECT * FROM captures WHERE specimen_id = ? ORDER BY id", [specimen_id])]

    def capture_images(self) -> list[tuple[int, str]]:
        """(capture id, blob key of its image) of every capture, removed ones included (reindex
        re-embeds them too, so a restore finds embeddings of the current model)."""
        return [(r[0], r[1]) for r in self.db.execute("SELECT id, image_key FROM captures ORDER BY id")]

    def find_captures(self, file_sha256: str | None = None, pixel_sha256: str | None = None):
        """Enrolled captures with this exact file or these exact pixels, with their specimen."""
        return list(self.db.query(
            "SELECT c.id, c.uuid, c.file_sha256, c.pixel_sha256, s.name AS specimen FROM captures c "
            "JOIN specimens s ON s.id = c.specimen_id WHERE s.removed_at IS NULL "
            "AND (c.file_sha256 = ? OR c.pixel_sha256 = ?)",
            [file_sha256, pixel_sha256]))

    def enrolled_file_hashes(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT file_sha256 FROM captures")}

    def add_captures(self, records: list[CaptureRecord], model_id: str, feature_version: str,
                     metadata: dict | None = None) -> list[int]:
        """Store captures, their files (as blobs), vectors and local features in one unit of
        work; a specimen is created with its first capture, with `metadata`. Returns the new
        capture ids, in order."""
        if not records:
            return []
        self.require_model(model_id)
        self.require_features(feature_version)
        ids, specimens = [], {}
        with self.unit_of_work():
            for r in records:
                if r.specimen not in specimens:
                    specimens[r.specimen] = self.ensure_specimen(r.specimen, metadata)
                specimen = specimens[r.specimen]
                capture_uuid = str(uuid.uuid4())
                cid = self.db["captures"].insert({
                    "uuid": capture_uuid, "specimen_id": specimen["id"],
                    "file_sha256": r.file_sha256, "pixel_sha256": r.pixel_sha256,
                    "image_key": self._keep(r), "original_name": os.path.basename(r.original_name),
                    "format": r.format, "width": r.width, "height": r.height,
                    "dtype": r.dtype, "channels": r.channels,
                    "exif": json.dumps(r.exif), "created_at": now(),
                    "quality": json.dumps(r.quality),
                    "acquisition": json.dumps(r.acquisition) if r.acquisition else None,
                }).last_pk
                self._audit("enrol", specimen, capture_uuid,
                            after={"original_name": os.path.basename(r.original_name),
                                   "file_sha256": r.file_sha256, "model_id": model_id})
                ids.append(cid)
            self._put_features(ids, [r.features for r in records], feature_version)
            self.vectors.add(ids, np.stack([r.vector for r in records]), model_id)
        return ids

    def _keep(self, record: CaptureRecord) -> str:
        """Keep a record's file as a blob, to be deleted again if this unit of work rolls back
        and it was new (and nothing else has come to refer to it meanwhile)."""
        key = content_key(record.file_sha256, record.extension)
        if not self.blobs.file(key).exists():
            self.after_rollback(lambda: self._delete_unreferenced_images({key}))
        return self.blobs.put(record.data, record.file_sha256, record.extension)

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
            f"JOIN specimens s ON s.id = c.specimen_id WHERE c.id IN ({marks}) AND s.removed_at IS NULL",
            ids)}

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

    def export_csv(self, path) -> int:
        """One row per specimen (csvfile.py); returns how many were written."""
        from .csvfile import export_csv

        return export_csv(self, path)

    def import_csv(self, path):
        """Names, notes and metadata updated from a CSV (csvfile.py); returns its report."""
        from .csvfile import import_csv

        return import_csv(self, path)

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

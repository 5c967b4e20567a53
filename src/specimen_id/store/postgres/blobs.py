"""Images in the database: the PostgreSQL backend's Blobs. Each image is one row of `blobs` by its
content key (bytea: images of a few MB, read whole; large objects would add a second id to keep
in step, and pg_dump takes bytea as it is). A station keeps local copies, made on first use, in
its cache (content-addressed, so a copy is never stale), with their renditions beside them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ...cache import cache_dir
from .. import renditions
from ..files import content_key, managed, write_atomic


class PgBlobs:
    def __init__(self, store, identity: str):
        self._store = store
        # one folder per database (named by its address without the password)
        self.root = cache_dir() / "postgres" / hashlib.sha256(identity.encode()).hexdigest()[:16]

    def put(self, data: bytes, sha256: str, extension: str) -> str:
        """Keep these bytes once per content (a row; inside the caller's unit of work, else its
        own); returns their key."""
        store = self._store
        key = content_key(sha256, extension)
        managed(self.root, key)  # (the one rule for keys)
        if store.db.execute("SELECT 1 FROM blobs WHERE key = ?", [key]).fetchone() is None:
            with store.unit_of_work(append_only=True):
                store.db.execute("INSERT INTO blobs (key, data) VALUES (?, ?) ON CONFLICT DO NOTHING", [key, data])
        return key

    def read(self, key: str) -> bytes:
        managed(self.root, key)
        row = self._store.db.execute("SELECT data FROM blobs WHERE key = ?", [key]).fetchone()
        if row is None:
            raise FileNotFoundError(2, f"{self._store.where}: no image {key} in the database (run verify)", key)
        return bytes(row[0])

    def file(self, key: str) -> Path:
        """A local copy of the blob, made from the database when missing."""
        path = managed(self.root, key)
        if not path.is_file():
            write_atomic(path, self.read(key))
        return path

    def delete(self, key: str) -> bool:
        store = self._store
        with store.unit_of_work():
            held = store.db.execute("DELETE FROM blobs WHERE key = ?", [key]).rowcount > 0
        path = managed(self.root, key)
        path.unlink(missing_ok=True)
        renditions.delete(self.root, path)
        return held

    def rendition(self, key: str, size: int, rgb8) -> Path:
        return renditions.rendition(self.root, self.file(key), size, rgb8)

    def digests(self) -> dict[str, str]:
        """key -> the SHA-256 of what the database holds under it (computed by the server)."""
        return dict(self._store.db.execute("SELECT key, encode(sha256(data), 'hex') FROM blobs").fetchall())

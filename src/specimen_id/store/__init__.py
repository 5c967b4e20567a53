"""Storage: SQLite as the source of truth, FAISS as derived data, files kept by content.

`open_store(location)` opens what a --db value names: a path is the directory backend
(database.py); a `scheme://` URL goes to the backend registered for its scheme, or is refused
in one line when none is."""

from __future__ import annotations

import importlib

from .database import Database
from .location import default_location, no_backend, scheme

# URL scheme -> "module:Class" of its backend, imported only when a URL of it is opened. A
# backend class opens as Database does, `Class(location, shared_index)`, and restores an
# archive with `Class.import_archive(archive, location)`.
BACKENDS: dict[str, str] = {}


def backend_for(location) -> type:
    """The backend class that serves a --db value."""
    name = BACKENDS.get(scheme(location) or "")
    if name is None:
        no_backend(location)  # a URL without a backend, or a connection string
        return Database
    module, _, cls = name.partition(":")
    return getattr(importlib.import_module(module), cls)


def open_store(location=None, shared_index=None):
    """The store a --db value names (SPECIMEN_ID_DB, else specimen-db, when None)."""
    location = location if location is not None else default_location()
    return backend_for(location)(location, shared_index)


def import_archive(archive, location) -> dict:
    """Restore an archive into the new or empty store a --db value names; its manifest."""
    return backend_for(location).import_archive(archive, location)


__all__ = ["BACKENDS", "Database", "backend_for", "import_archive", "open_store"]

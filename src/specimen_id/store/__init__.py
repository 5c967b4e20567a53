"""Storage: SQLite as the source of truth, FAISS as derived data, files kept by content."""

from .database import Database, default_path

__all__ = ["Database", "default_path"]

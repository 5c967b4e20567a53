"""Storage: SQLite as the source of truth, FAISS as derived data, files kept by content."""

from .database import DEFAULT_THRESHOLD, Database, default_path

__all__ = ["DEFAULT_THRESHOLD", "Database", "default_path"]

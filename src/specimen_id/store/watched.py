"""What a watched folder has handled, by content: a mixin of Database. Kept in SQLite (not a
side file beside the folder) so it is backed up, locked and migrated with everything else."""

from __future__ import annotations

from .settings import now


class Watched:
    """Needs `self.db` (a sqlite_utils Database with a `watched` table) and `writing()`."""

    def watched(self, file_sha256: str) -> dict | None:
        """How this content was handled, or None when it never was."""
        rows = list(self.db.query("SELECT * FROM watched WHERE file_sha256 = ?", [file_sha256]))
        return rows[0] if rows else None

    def mark_watched(self, file_sha256: str, name: str, outcome: str, detail: str = "") -> None:
        """Record content as handled (the first record wins: content is handled once)."""
        with self.writing(), self.transaction():
            self.db.execute("INSERT OR IGNORE INTO watched(file_sha256, name, outcome, detail, "
                            "handled_at) VALUES (?, ?, ?, ?, ?)",
                            [file_sha256, name, outcome, detail, now()])

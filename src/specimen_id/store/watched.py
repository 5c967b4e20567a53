"""What a watched folder has handled, by content: a mixin of Database. Kept in SQLite (not a
side file beside the folder) so it is backed up, locked and migrated with everything else."""

from __future__ import annotations

from .settings import now


class Watched:
    """Needs `self.db` (a connection with sqlite-utils' calls, holding a `watched` table)."""

    def watched(self, file_sha256: str, action: str) -> dict | None:
        """How this content was handled by this action ("query", "enrol:NAME"), or None."""
        rows = list(self.db.query("SELECT * FROM watched WHERE file_sha256 = ? AND action = ?",
                                  [file_sha256, action]))
        return rows[0] if rows else None

    def mark_watched(self, file_sha256: str, action: str, name: str, outcome: str, detail: str = "") -> None:
        """Record content as handled by an action (the first record wins: once per action).
        Append-only, like a logged query: it never waits for an enrolment to finish."""
        with self.unit_of_work(append_only=True):
            self.db.execute("INSERT INTO watched(file_sha256, action, name, outcome, detail, handled_at) "
                            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            [file_sha256, action, name, outcome, detail, now()])

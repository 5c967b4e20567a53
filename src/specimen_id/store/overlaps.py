"""Where enrolled captures of different specimens overlap (neighbouring fields of one slide,
found by verification when the later one is enrolled): a mixin of Database. Derived facts,
recorded just after the batch that found them (a process killed in between loses them, not
the captures)."""

from __future__ import annotations

from .settings import now


class Overlaps:
    """Needs `self.db` (a connection with sqlite-utils' calls, holding an `overlaps` table: a
    keyword of PostgreSQL, so always quoted)."""

    def record_overlaps(self, found: list[dict]) -> None:
        """Store overlaps, each {capture_id, other_id, share_of_capture, share_of_other}."""
        if not found:
            return
        with self.unit_of_work():
            self.db.conn.executemany(
                "INSERT INTO \"overlaps\" (capture_id, other_id, share_of_capture, share_of_other, found_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (capture_id, other_id) DO UPDATE SET "
                "share_of_capture = excluded.share_of_capture, share_of_other = excluded.share_of_other, "
                "found_at = excluded.found_at",
                [(f["capture_id"], f["other_id"], f["share_of_capture"], f["share_of_other"], now()) for f in found])

    def overlaps_of(self, specimen_id: int) -> list[dict]:
        """Every overlap of this specimen's captures with another (active) specimen's, seen from
        this specimen: its capture, the other specimen and capture, and the share of each field
        inside the other."""
        rows = self.db.execute(
            "SELECT mine.uuid, s.name, theirs.uuid, o.share_of_capture, o.share_of_other FROM \"overlaps\" o "
            "JOIN captures mine ON mine.id = o.capture_id JOIN captures theirs ON theirs.id = o.other_id "
            "JOIN specimens s ON s.id = theirs.specimen_id "
            "WHERE mine.specimen_id = ? AND theirs.specimen_id != ? AND s.removed_at IS NULL "
            "UNION "
            "SELECT mine.uuid, s.name, theirs.uuid, o.share_of_other, o.share_of_capture FROM \"overlaps\" o "
            "JOIN captures mine ON mine.id = o.other_id JOIN captures theirs ON theirs.id = o.capture_id "
            "JOIN specimens s ON s.id = theirs.specimen_id "
            "WHERE mine.specimen_id = ? AND theirs.specimen_id != ? AND s.removed_at IS NULL "
            "ORDER BY 2, 1", [specimen_id] * 4).fetchall()
        return [{"capture": mine, "specimen": name, "other_capture": theirs,
                 "share_of_capture": round(a, 3), "share_of_other": round(b, 3)}
                for mine, name, theirs, a, b in rows]

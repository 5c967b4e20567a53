"""Soft delete: `remove` hides a specimen (list, query, index, web) but keeps its rows, embeddings
and images, so `restore` brings it back with the same ids and uuids; `purge` deletes a removed
specimen for good, with the managed images nothing else refers to. A removed specimen's name
stays reserved until it is purged. A mixin of Database."""

from __future__ import annotations

from ..errors import SpecimenIdError
from .settings import now


class Removal:
    def remove_specimen(self, name: str) -> int:
        """Hide a specimen and its captures; returns the captures hidden."""
        with self.writing():
            return self._set_removed(self.specimen(name), now(), "remove")

    def restore_specimen(self, name: str) -> int:
        """Undo a removal: the specimen, its captures and their index entries come back under
        the same ids and uuids; returns the captures restored."""
        with self.writing():
            return self._set_removed(self.removed_specimen(name), None, "restore")

    def _set_removed(self, specimen: dict, removed_at: str | None, action: str) -> int:
        """Set (or clear) removed_at in one audited transaction, its captures' vectors leaving
        (or rejoining) those searched with it."""
        ids = [c["id"] for c in self.captures(specimen["id"])]
        self.vectors.warm()  # (a slow load or rebuild, outside the write transaction)
        with self.unit_of_work():
            self.vectors.searchable(ids, removed_at is None)  # (first: it sees them as they were)
            self.db.execute("UPDATE specimens SET removed_at = ? WHERE id = ?", [removed_at, specimen["id"]])
            self._audit(action, specimen, before={"removed_at": specimen["removed_at"]},
                        after={"removed_at": removed_at}, captures=len(ids))
        return len(ids)

    def purge_specimen(self, name: str) -> dict:
        """Delete a removed specimen for good: its rows, embeddings, local features, and the
        managed image files no capture or logged query refers to any more. The audit trail keeps
        what it was. Returns {"captures": n, "files": [deleted paths]}."""
        with self.writing():
            specimen = self.removed_specimen(name)
            captures = self.captures(specimen["id"])
            with self.unit_of_work():
                self._audit("purge", specimen, before={
                    "name": specimen["name"], "metadata": specimen["metadata"], "notes": specimen["notes"],
                    "created_at": specimen["created_at"], "removed_at": specimen["removed_at"],
                    "captures": [{"uuid": c["uuid"], "original_name": c["original_name"],
                                  "file_sha256": c["file_sha256"]} for c in captures]})
                # logged queries stay (they are the record of past decisions), unattached
                self.db.execute("UPDATE queries SET specimen_id = NULL WHERE specimen_id = ?", [specimen["id"]])
                self.db.execute("DELETE FROM captures WHERE specimen_id = ?", [specimen["id"]])
                self.db.execute("DELETE FROM specimens WHERE id = ?", [specimen["id"]])
            # after the commit, still under the write lock (no enrolment can reuse a file meanwhile)
            files = self._delete_unreferenced_images({c["image_key"] for c in captures})
        return {"captures": len(captures), "files": files}

    def removed_specimen(self, name: str) -> dict:
        specimen = self.specimen(name, removed=True)
        if specimen["removed_at"] is None:
            raise SpecimenIdError(f"specimen {name!r} is not removed (`specimen-id remove {name}` first)")
        return specimen

    def removed_specimens(self) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT name FROM specimens WHERE removed_at IS NOT NULL ORDER BY name")]

    def active_counts(self) -> dict:
        """Specimens and captures that list and query see, and those removed but kept."""
        row = self.db.execute(
            "SELECT COUNT(DISTINCT s.id) FILTER (WHERE s.removed_at IS NULL), "
            "COUNT(c.id) FILTER (WHERE s.removed_at IS NULL), "
            "COUNT(DISTINCT s.id) FILTER (WHERE s.removed_at IS NOT NULL), "
            "COUNT(c.id) FILTER (WHERE s.removed_at IS NOT NULL) "
            "FROM specimens s LEFT JOIN captures c ON c.specimen_id = s.id").fetchone()
        return dict(zip(("specimens", "captures", "removed_specimens", "removed_captures"), row))

    def _delete_unreferenced_images(self, paths: set[str]) -> list[str]:
        """Delete these managed files unless another capture or a logged query still uses
        them (content-addressed files are shared; nothing else in images/ is touched), with
        their renditions."""
        deleted = []
        for key in sorted(paths):
            used = self.db.execute("SELECT 1 FROM captures WHERE image_key = ? UNION ALL "
                                   "SELECT 1 FROM queries WHERE image_key = ?", [key, key])
            if used.fetchone() is None and self.blobs.delete(key):
                deleted.append(key)
        return deleted


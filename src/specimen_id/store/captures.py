"""Specimens and captures as every backend keeps them: the rows, in SQL both SQLite and
PostgreSQL run (through a connection with sqlite-utils' calls: `execute`, `query`, tables'
`insert`), each change one audited unit of work. A mixin of the backends; each keeps a
record's file its own way (`_keep`)."""

from __future__ import annotations

import json
import os
import uuid

import numpy as np

from ..errors import SpecimenRemoved, UnknownSpecimen
from .curation import check_metadata, check_name
from .querylog import decoded
from .records import CaptureRecord
from .settings import chunks, marks, now


class Captures:
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

    def local_features(self, ids, version: str) -> dict[int, bytes]:
        """capture id -> stored local features of that version."""
        found = {}
        for chunk in chunks(int(i) for i in ids):
            found.update(self.db.execute(
                f"SELECT capture_id, data FROM local_features WHERE version = ? AND capture_id IN ({marks(chunk)})",
                [version, *chunk]).fetchall())
        return found

    def capture_owners(self, ids) -> dict[int, dict]:
        """capture id -> {capture uuid, specimen name, specimen id}."""
        found = {}
        for chunk in chunks(int(i) for i in ids if i >= 0):
            found.update((r["id"], r) for r in self.db.query(
                f"SELECT c.id, c.uuid, s.name AS specimen, s.id AS specimen_id FROM captures c "
                f"JOIN specimens s ON s.id = c.specimen_id WHERE c.id IN ({marks(chunk)}) AND s.removed_at IS NULL",
                chunk))
        return found


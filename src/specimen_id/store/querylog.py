"""The query log: every answered query with what it takes to explain it later (a mixin of
Database)."""

from __future__ import annotations

import json
import uuid

from .settings import now


class QueryLog:
    def log_queries(self, answered: list[tuple[dict, object]], model_id: str, top_k: int,
                    software_version: str, score_kind: str = "cosine") -> list[str]:
        """Log answered (result, capture) pairs, each at its result's threshold, in one unit of
        work: a batch of files commits once. Returns their query UUIDs, in order."""
        def keep():
            return [self.blobs.put(capture.data, capture.file_sha256, capture.extension) for _, capture in answered]

        keys = keep()
        uuids = [str(uuid.uuid4()) for _ in answered]
        with self.unit_of_work(append_only=True):
            for (result, capture), key, query_uuid in zip(answered, keys, uuids):
                specimen_id = self._decided_for(result)
                self.db["queries"].insert({
                    "uuid": query_uuid, "created_at": now(), "query_name": result["query"],
                    "file_sha256": capture.file_sha256, "pixel_sha256": capture.pixel_sha256,
                    "image_key": key, "model_id": model_id, "threshold": result["threshold"],
                    "score_kind": score_kind, "top_k": top_k, "decision": result["decision"],
                    "specimen_id": specimen_id, "score": result["score"],
                    "candidates": json.dumps(result["candidates"]),
                    "software_version": software_version, "quality": json.dumps(capture.quality),
                    "warnings": json.dumps(result.get("warnings", [])), "margin": result.get("margin")})
        # A purge running meanwhile (queries do not take the write lock) may have deleted the
        # same content as unreferenced just before a row referenced it: write it again.
        keep()
        return uuids

    def _decided_for(self, result: dict) -> int | None:
        """The id of the specimen a result was decided for (removed since, too); one renamed
        since it was answered (a batch is logged after all of it is answered) is logged by
        none, as the result's own text still names it."""
        from ..errors import UnknownSpecimen

        if not result.get("specimen"):
            return None
        try:
            return self.specimen(result["specimen"], removed=True)["id"]
        except UnknownSpecimen:
            return None

    def queries(self, limit: int = 100, specimen_id: int | None = None) -> list[dict]:
        """Logged queries, newest first (only those decided for one specimen, if given)."""
        where = "WHERE q.specimen_id = ?" if specimen_id is not None else ""
        params = [specimen_id] if specimen_id is not None else []
        return [decoded(r) for r in self.db.query(
            f"SELECT q.*, s.name AS specimen, {_LATEST_REVIEW} FROM queries q LEFT JOIN specimens s "
            f"ON s.id = q.specimen_id {where} ORDER BY q.id DESC LIMIT ?", [*params, limit])]

    def image_key(self, kind: str, uuid_: str) -> str:
        """The blob key of a capture's or a logged query's image, found by its UUID (never by
        a path from outside, so nothing outside the database can be named)."""
        sql = {"capture": "SELECT image_key FROM captures c JOIN specimens s ON s.id = c.specimen_id "
                          "WHERE c.uuid = ? AND s.removed_at IS NULL",  # removed: not shown
               "query": "SELECT image_key FROM queries WHERE uuid = ?"}[kind]
        row = self.db.execute(sql, [uuid_]).fetchone()
        if row is None or row[0] is None:
            raise KeyError(uuid_)
        return row[0]

    def logged_query(self, uuid_: str) -> dict:
        rows = [decoded(r) for r in self.db.query(
            f"SELECT q.*, s.name AS specimen, {_LATEST_REVIEW} FROM queries q LEFT JOIN specimens s "
            "ON s.id = q.specimen_id WHERE q.uuid = ?", [uuid_])]
        if not rows:
            raise KeyError(uuid_)
        return rows[0]


# the latest review of a query as JSON (NULL when nobody reviewed it)
_LATEST_REVIEW = ("(SELECT json_object('verdict', r.verdict, 'specimen', (SELECT name FROM specimens "
                  "WHERE id = r.specimen_id), 'reviewer', r.reviewer, 'note', r.note, 'at', r.created_at) "
                  "FROM reviews r WHERE r.query_id = q.id ORDER BY r.id DESC LIMIT 1) AS review")


def decoded(row: dict) -> dict:
    """JSON columns back to Python values."""
    for key in ("metadata", "exif", "candidates", "review", "quality", "acquisition", "warnings"):
        if isinstance(row.get(key), str):
            row[key] = json.loads(row[key])
    return row

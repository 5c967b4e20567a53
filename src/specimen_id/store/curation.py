"""Curating what is enrolled: rename, merge, move, edit, and people's reviews of decisions.
A mixin of Database (needs `self.db`, `specimen()`, `_audit()`); each change is one audited
unit of work, its checks (names, existence) made inside it. None of these change an embedding,
so the FAISS index stays valid: it maps capture ids, and owners are looked up in SQLite."""

from __future__ import annotations

import json
import math
import uuid

from ..errors import CaptureGone, SpecimenIdError, SpecimenRemoved
from ..text import name_problem
from .querylog import decoded
from .settings import chunks, marks, now

VERDICTS = ("specimen", "none", "confirmed", "rejected")


def check_name(name: str) -> None:
    """Refuse a name that text.name_problem refuses (control characters, slashes, `.`...)."""
    problem = name_problem(name)
    if problem:
        raise SpecimenIdError(problem)


def check_metadata(metadata) -> None:
    """Metadata is a mapping of text keys to plain values (text, numbers, true/false, null):
    anything else (objects, nesting, NaN, which is not JSON) is refused before anything is
    stored."""
    if not isinstance(metadata, dict):
        raise SpecimenIdError(f"metadata must be a mapping of keys to values, not {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not key.strip():
            raise SpecimenIdError(f"metadata keys must be non-empty text, not {key!r}")
        if not (value is None or isinstance(value, (str, bool, int))
                or (isinstance(value, float) and math.isfinite(value))):
            raise SpecimenIdError(f"metadata value of {key!r} must be text, a finite number, "
                                  f"true/false or null, not {type(value).__name__} {value!r}")


class Curation:
    def rename_specimen(self, name: str, new_name: str) -> None:
        with self.unit_of_work():  # checked under the lock: nobody takes the name meanwhile
            self._hold_log()  # queries and reviews being logged name it too
            specimen = self.specimen(name)
            self._free(new_name)
            self.db.execute("UPDATE specimens SET name = ? WHERE id = ?", [new_name, specimen["id"]])
            self._rename_in_logged_candidates(specimen["name"], new_name)
            self._audit("rename", specimen, before={"name": specimen["name"]}, after={"name": new_name})

    def merge_specimens(self, source: str, target: str) -> int:
        """Move every capture and query of `source` to `target`, then drop `source`; returns
        the captures moved. Metadata of both is kept (target's wins on a clash)."""
        with self.unit_of_work():  # both looked up under the lock: neither removed nor merged meanwhile
            a, b = self.specimen(source), self.specimen(target)
            if a["id"] == b["id"]:
                raise SpecimenIdError(f"cannot merge {source!r} into itself")
            self._hold_log()  # a query or review being logged for them finishes first
            notes = "\n".join(n for n in (b["notes"], a["notes"]) if n)
            captures = [r[0] for r in self.db.execute("SELECT uuid FROM captures WHERE specimen_id = ?",
                                                      [a["id"]])]
            moved = self.db.execute("UPDATE captures SET specimen_id = ? WHERE specimen_id = ?",
                                    [b["id"], a["id"]]).rowcount
            self.db.execute("UPDATE queries SET specimen_id = ? WHERE specimen_id = ?", [b["id"], a["id"]])
            self.db.execute("UPDATE reviews SET specimen_id = ? WHERE specimen_id = ?", [b["id"], a["id"]])
            self.db.execute("UPDATE specimens SET metadata = ?, notes = ? WHERE id = ?",
                            [json.dumps({**a["metadata"], **b["metadata"]}), notes, b["id"]])
            self.db.execute("DELETE FROM specimens WHERE id = ?", [a["id"]])
            self._rename_in_logged_candidates(a["name"], b["name"])
            merged = {"merged_into": b["uuid"], "captures": captures}
            self._audit("merge", a, before={"name": a["name"], "metadata": a["metadata"], "notes": a["notes"]},
                        after=merged)
            self._audit("merge", b, before={"metadata": b["metadata"], "notes": b["notes"]},
                        after={"metadata": {**a["metadata"], **b["metadata"]}, "notes": notes},
                        merged_from=a["uuid"], captures=captures)
        return moved

    def export_csv(self, path) -> int:
        """One row per specimen (csvfile.py); returns how many were written."""
        from .csvfile import export_csv

        return export_csv(self, path)

    def import_csv(self, path):
        """Names, notes and metadata updated from a CSV (csvfile.py); returns its report."""
        from .csvfile import import_csv

        return import_csv(self, path)

    def capture_owner(self, capture_uuid: str) -> dict | None:
        """{specimen, original_name} of a capture of a specimen not removed, or None."""
        rows = list(self.db.query(
            "SELECT s.name AS specimen, c.original_name FROM captures c JOIN specimens s ON s.id = c.specimen_id "
            "WHERE c.uuid = ? AND s.removed_at IS NULL", [capture_uuid]))
        return rows[0] if rows else None

    def move_capture(self, capture_uuid: str, target: str) -> None:
        with self.unit_of_work():
            specimen = self.specimen(target)
            row = self.db.execute("SELECT s.uuid, s.name, s.removed_at FROM captures c JOIN specimens s "
                                  "ON s.id = c.specimen_id WHERE c.uuid = ?", [capture_uuid]).fetchone()
            if row is None:
                raise SpecimenIdError(f"no capture {capture_uuid} (see `specimen-id show NAME`)")
            if row[2] is not None:
                raise SpecimenRemoved(row[1])
            if row[0] == specimen["uuid"]:
                raise SpecimenIdError(f"capture {capture_uuid} is a capture of {specimen['name']} already")
            self.db.execute("UPDATE captures SET specimen_id = ? WHERE uuid = ?", [specimen["id"], capture_uuid])
            self._audit("move", specimen, capture_uuid, before={"specimen": row[0], "name": row[1]},
                        after={"specimen": specimen["uuid"], "name": specimen["name"]})

    def edit_specimen(self, name: str, metadata: dict, notes: str) -> None:
        """Replace a specimen's metadata and notes."""
        check_metadata(metadata)
        with self.unit_of_work():
            specimen = self.specimen(name)
            before = {"metadata": specimen["metadata"], "notes": specimen["notes"]}
            after = {"metadata": metadata, "notes": notes}
            if before == after:
                return
            self.db.execute("UPDATE specimens SET metadata = ?, notes = ? WHERE id = ?",
                            [json.dumps(metadata), notes, specimen["id"]])
            self._audit("edit", specimen, before=before, after=after)

    def review(self, query_uuid: str, verdict: str, reviewer: str, note: str = "",
               specimen: str | None = None, capture: str | None = None) -> str | None:
        """Record a person's answer to a logged query (the latest one counts, every one stays):
        'specimen' (it shows this enrolled specimen, named, or as the specimen that now holds
        the candidate's `capture`: a name may have been freed by a purge and taken again since
        the query was logged), 'none' (none of those offered), or the older verdicts on its
        decision, 'confirmed' and 'rejected', which name no specimen. Returns the specimen's name."""
        if verdict not in VERDICTS:
            raise SpecimenIdError(f"verdict must be one of {', '.join(VERDICTS)}")
        if specimen and capture:
            raise SpecimenIdError("name the specimen or its capture, not both")
        if (verdict == "specimen") != bool(specimen or capture):
            raise SpecimenIdError("name the specimen the query shows, or review it as none of those")
        if not reviewer.strip():
            raise SpecimenIdError("a review needs the reviewer's name")
        # append-only: a person's verdict adds a row and changes nothing another writer checks,
        # so it does not queue behind an enrolment (the query is looked up inside its transaction)
        with self.unit_of_work(append_only=True):
            row = self.db.execute("SELECT q.id, s.uuid, s.name FROM queries q LEFT JOIN specimens s "
                                  "ON s.id = q.specimen_id WHERE q.uuid = ?", [query_uuid]).fetchone()
            if row is None:
                raise SpecimenIdError(f"no logged query {query_uuid} (see the history)")
            named = self._holder(capture) if capture else self.specimen(specimen) if specimen else None
            self.db["reviews"].insert({"query_id": row[0], "verdict": verdict,
                                       "specimen_id": named["id"] if named else None, "capture_uuid": capture,
                                       "reviewer": reviewer.strip(), "note": note, "created_at": now()})
            self._audit("review", named or ({"uuid": row[1], "name": row[2]} if row[1] else None), capture,
                        query=query_uuid, after={"verdict": verdict, "specimen": named and named["name"],
                                                 "capture": capture, "reviewer": reviewer.strip(), "note": note})
        return named["name"] if named else None

    def _holder(self, capture_uuid: str) -> dict:
        """The enrolled specimen that holds this capture now."""
        name = self._holders([capture_uuid]).get(capture_uuid)
        if name is None:  # removed with its specimen, purged (the audit trail keeps its uuid), or never
            try:
                uuid.UUID(capture_uuid)
            except ValueError:
                raise CaptureGone(capture_uuid, removed=False) from None
            held = self.db.execute("SELECT 1 FROM captures WHERE uuid = ?", [capture_uuid]).fetchone()
            purged = self.db.execute("SELECT 1 FROM audit WHERE capture_uuid = ? OR instr(changes, ?) > 0 LIMIT 1",
                                     [capture_uuid, json.dumps(capture_uuid)]).fetchone()
            raise CaptureGone(capture_uuid, removed=bool(held or purged))
        return self.specimen(name)  # (by its own name: names are unique)

    def reviews_of(self, query_uuid: str) -> list[dict]:
        """Every review of a logged query, newest first, with the specimen each names."""
        return list(self.db.query(
            "SELECT r.verdict, s.name AS specimen, r.reviewer, r.note, r.created_at AS at FROM reviews r "
            "JOIN queries q ON q.id = r.query_id LEFT JOIN specimens s ON s.id = r.specimen_id "
            "WHERE q.uuid = ? ORDER BY r.id DESC", [query_uuid]))

    def reviewed(self, score_kind: str) -> list[dict]:
        """The latest review of every query scored this way, with what the query was answered:
        verdict, the specimen the review names (and the capture, when "this one" named it),
        decision, decided specimen, score, candidates."""
        rows = [decoded(r) for r in self.db.query(
            "SELECT r.verdict, rs.name AS named, r.capture_uuid AS capture, q.decision, qs.name AS specimen, "
            "q.score, q.candidates "
            "FROM queries q JOIN reviews r ON r.query_id = q.id LEFT JOIN specimens rs ON rs.id = r.specimen_id "
            "LEFT JOIN specimens qs ON qs.id = q.specimen_id WHERE q.score_kind = ? AND r.id = "
            "(SELECT MAX(id) FROM reviews WHERE query_id = q.id)", [score_kind])]
        # a review by capture is judged by who holds each capture now (moves and purges since
        # the query change that, and a purged name may have been taken again)
        chosen = [r for r in rows if r["capture"]]
        uuids = {c["capture"] for r in chosen for c in r["candidates"]} | {r["capture"] for r in chosen}
        holders = self._holders(uuids)
        for r in chosen:
            r["named"] = holders.get(r["capture"])
            for c in r["candidates"]:
                c["holder"] = holders.get(c["capture"])
        return rows

    def _holders(self, capture_uuids) -> dict[str, str]:
        """capture uuid -> the name of the enrolled specimen that holds it now."""
        found = {}
        for chunk in chunks(capture_uuids):
            found.update(self.db.execute(
                f"SELECT c.uuid, s.name FROM captures c JOIN specimens s ON s.id = c.specimen_id "
                f"WHERE s.removed_at IS NULL AND c.uuid IN ({marks(chunk)})", chunk).fetchall())
        return found

    def _rename_in_logged_candidates(self, old: str, new: str) -> None:
        """Past results name their candidates; keep them pointing at the specimen as it is now
        called (inside the caller's transaction). After a merge two candidates may name one
        specimen: the better one stays, as the query lists one per specimen."""
        for qid, text in self.db.execute("SELECT id, candidates FROM queries WHERE instr(candidates, ?) > 0",
                                         [json.dumps(old)]).fetchall():
            candidates, seen = [], set()
            for c in json.loads(text):  # best first
                if c.get("specimen") == old:
                    c["specimen"] = new
                if c.get("specimen") not in seen:
                    seen.add(c.get("specimen"))
                    candidates.append(c)
            self.db.execute("UPDATE queries SET candidates = ? WHERE id = ?", [json.dumps(candidates), qid])

    def _free(self, name: str) -> None:
        check_name(name)
        row = self.db.execute("SELECT removed_at FROM specimens WHERE name = ?", [name]).fetchone()
        if row and row[0] is not None:
            raise SpecimenRemoved(name)  # the name stays reserved until purged
        if row:
            raise SpecimenIdError(f"a specimen named {name!r} exists already (merge them instead?)")

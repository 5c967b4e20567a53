"""CSV for lab information systems: one row per specimen out, names/notes/metadata back in.

Columns: uuid, name, notes, created_at, captures, then `meta:KEY` for every metadata key.
Spreadsheets run cells that start with = + - @ (or tab/CR) as formulas, so such a cell is written
with a leading apostrophe (OWASP's advice), as is one that starts with an apostrophe; import takes
exactly that apostrophe off again, so export then import changes nothing. Files are UTF-8 with a
byte-order mark, which Excel needs to read non-ASCII text.

Import is all or nothing per row: each row's rename and edit commit together (with their audit
rows), a bad or unknown row is reported by its line number and skipped, the other rows go on."""

from __future__ import annotations

import csv
import io
import json
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpecimenIdError
from .audit import CLIENT
from .files import write_atomic

FIXED = ["uuid", "name", "notes", "created_at", "captures"]
META = "meta:"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def protect(cell: str) -> str:
    return "'" + cell if cell.startswith(FORMULA_START + ("'",)) else cell


def unprotect(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_START + ("'",)) else cell


def cell(value) -> str:
    """A metadata value as CSV text: text as it is, other values (numbers, true/false) as
    JSON, nothing for None; import compares cells with this, so untouched values keep their
    type."""
    return "" if value is None else value if isinstance(value, str) else json.dumps(value)


def export_csv(db, path) -> int:
    """Write every specimen (removed ones left out) to `path`; returns the rows written."""
    specimens = db.specimens()
    keys = sorted({k for s in specimens for k in s["metadata"]})
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(FIXED + [META + k for k in keys])
    for s in specimens:
        cells = [s["uuid"], s["name"], s["notes"], s["created_at"], str(s["captures"])]
        cells += [cell(s["metadata"].get(k)) for k in keys]
        writer.writerow([protect(c) for c in cells])
    write_atomic(Path(path), out.getvalue().encode("utf-8-sig"))
    return len(specimens)


@dataclass
class CsvReport:
    updated: list = field(default_factory=list)  # specimen names (as they are now)
    unchanged: int = 0
    problems: list = field(default_factory=list)  # "line N: why", unknown and bad rows alike


def import_csv(db, path) -> CsvReport:
    """Update the specimens a CSV names (by uuid, else by name): name, notes and the metadata
    keys it has columns for (an empty cell removes that key; keys without a column stay)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SpecimenIdError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header = next(reader, None)
    if not header:
        raise SpecimenIdError(f"{path}: empty file, no header row")
    header = [h.strip() for h in header]
    unknown = [h for h in header if h not in FIXED and not (h.startswith(META) and len(h) > len(META))]
    if unknown or not {"uuid", "name"} & set(header) or len(set(header)) < len(header):
        raise SpecimenIdError(f"{path}: line 1: the header needs uuid or name, and only "
                              f"{', '.join(FIXED)} or meta:KEY columns, each once (not {unknown or header})")
    report = CsvReport()
    token = CLIENT.set(f"import-csv {path.name}")  # the audit rows say where the change came from
    try:
        while True:
            line = reader.line_num + 1  # where this record starts (a quoted cell may span lines)
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                report.problems.append(f"line {line}: {e}")
                continue
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                report.problems.append(f"line {line}: {len(row)} cells, the header has {len(header)}")
                continue
            try:
                changed = _apply(db, dict(zip(header, (unprotect(c) for c in row))))
            except SpecimenIdError as e:
                report.problems.append(f"line {line}: {e}")
                continue
            if changed:
                report.updated.append(changed)
            else:
                report.unchanged += 1
    finally:
        CLIENT.reset(token)
    return report


def _apply(db, cells: dict) -> str | None:
    """One row in one transaction; returns the specimen's name when something changed."""
    with db.unit_of_work():  # read and changed under the lock: no concurrent edit is lost
        return _apply_locked(db, cells)


def _apply_locked(db, cells: dict) -> str | None:
    uuid_ = cells.get("uuid", "").strip()
    if uuid_:
        found = db.db.execute("SELECT name FROM specimens WHERE uuid = ?", [uuid_]).fetchone()
        if found is None:
            raise SpecimenIdError(f"no specimen with uuid {uuid_}")
        current = db.specimen(found[0])  # SpecimenRemoved for a removed one
    else:
        current = db.specimen(cells.get("name", "").strip())
    name = cells.get("name", current["name"]).strip() or current["name"]
    notes = cells.get("notes", current["notes"])
    metadata = dict(current["metadata"])
    for column, value in cells.items():
        if column.startswith(META):
            key = column[len(META):]
            if value == cell(metadata.get(key)):
                continue  # as exported: keep the value and its type
            if value:
                metadata[key] = value
            else:
                with suppress(KeyError):
                    del metadata[key]
    if (name, notes, metadata) == (current["name"], current["notes"], current["metadata"]):
        return None
    if name != current["name"]:
        db.rename_specimen(current["name"], name)
    db.edit_specimen(name, metadata, notes)
    return name

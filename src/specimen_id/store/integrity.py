"""`verify`: does the database directory hold what SQLite says it holds?

Checks SQLite itself (integrity, foreign keys, schema version), every capture's embedding and
local features against the database's model, the index file against the embeddings it is built
from (id by id, vector by vector), every managed image against its SHA-256, and specimen names
stored before names were checked (they work, but garble a terminal or a web address).

Findings come in two kinds. A *problem* is something stored that is lost, damaged or
disagrees, and that nothing fixes by itself: verify fails on it. A *notice* is harmless and
expected after an interrupted process: an index file that is stale, missing or unreadable (it
is rebuilt from SQLite on the next open), an image file no row refers to, a damaged or orphaned
rendition (renditions.py: derived, made again on demand), or a temporary file
(a writer killed between writing a file and committing, or between committing and deleting,
leaves these; nothing stored depends on them). `repair` removes notices too.

Reads only: nothing here writes to the database directory.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatabaseDamaged, ImageRefused
from ..text import name_problem
from . import renditions
from .files import IMAGE_KEY, abandoned, image_relpath, managed, working_folders
from .schema import MIGRATIONS, schema_version
from .vectors import FaissIndex

NORM_TOLERANCE = 1e-3  # stored vectors are L2-normalised float32
# A query process writes its image copy before it logs the query, without the write lock: a
# fresh unreferenced file may be one it is about to refer to, so it is left alone.
LEFTOVER_MIN_AGE_S = 60


@dataclass
class Finding:
    kind: str  # sqlite, schema, name, embedding, stray, features, index, image, orphan, temp, rendition
    message: str
    problem: bool = True  # False: a notice (harmless, see the module docstring)
    capture_id: int | None = None
    path: Path | None = None
    key: str | None = None  # an image no row refers to, old enough to delete (a server's)

    def __str__(self) -> str:
        return f"{'problem' if self.problem else 'notice'}: {self.message}"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    counts: dict = field(default_factory=dict)  # what was checked, for the summary line

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.problem]

    @property
    def notices(self) -> list[Finding]:
        return [f for f in self.findings if not f.problem]

    def add(self, kind: str, message: str, **facts) -> None:
        self.findings.append(Finding(kind, message, **facts))

    def summary(self) -> str:
        c = self.counts
        head = "ok" if not self.problems else f"{len(self.problems)} problem(s)"
        return (f"{head}: {c.get('specimens', 0)} specimen(s), {c.get('captures', 0)} capture(s), "
                f"{c.get('files', 0)} image file(s), index generation {c.get('generation', 0)}"
                + (f"; {len(self.notices)} notice(s)" if self.notices else ""))


def verify(db, feature_version: str) -> Report:
    """Check a database (an open store.Database) and report every finding; local features of
    another recipe than `feature_version` (the software's) count as stale."""
    report = Report()
    conn = db.db.conn
    if not _sqlite_ok(conn, report):
        return report  # the rest would read damaged pages
    # One read transaction: every check below sees the same committed state, even while
    # another process enrols.
    with db.db.atomic():
        _check_schema(conn, report)
        _check_names(conn, report)
        captures = _check_vectors(db, report, feature_version)
        _check_index(db, report)
        hashes = {}

        def digest(key: str) -> str | None:  # each file read once, however many rows share it
            if key not in hashes:
                hashes[key] = _sha256(db.root / image_relpath(key))
            return hashes[key]

        referenced = check_images(db, report, captures, digest, lambda key: f"image file {image_relpath(key)}")
    _check_leftovers(db.root, {image_relpath(key) for key in referenced}, report)
    return report


def _sqlite_ok(conn, report: Report) -> bool:
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        if rows != ["ok"]:
            for row in rows:
                report.add("sqlite", f"specimens.sqlite: {row} (restore it from a backup)")
            return False
        for table, rowid, parent, _ in conn.execute("PRAGMA foreign_key_check"):
            report.add("sqlite", f"specimens.sqlite: row {rowid} of {table} refers to a missing {parent} row")
    except sqlite3.DatabaseError as e:
        report.add("sqlite", f"specimens.sqlite cannot be read ({e}); restore it from a backup")
        return False
    return True


def _check_schema(conn, report: Report) -> None:
    version = schema_version(conn)
    if version != len(MIGRATIONS):
        report.add("schema", f"schema version {version}, this specimen-id expects {len(MIGRATIONS)}")


def _check_names(conn, report: Report) -> None:
    """Names stored before they were checked (control characters, `..`, 10,000 characters)
    still work, but garble `list` and are unreachable in the web app: name each by its uuid."""
    for uuid_, name in conn.execute("SELECT uuid, name FROM specimens"):
        problem = name_problem(name)
        if problem:
            report.add("name", f"specimen {uuid_}: {problem}; rename it with "
                               f"`specimen-id rename {uuid_} NEW_NAME`")


def _check_vectors(db, report: Report, feature_version: str) -> dict[int, dict]:
    """Every capture has one sound embedding of the current model and current local features;
    returns the captures by id."""
    captures = {r["id"]: r for r in db.db.query(
        "SELECT c.id, c.uuid, c.image_key, c.file_sha256, s.name AS specimen FROM captures c "
        "LEFT JOIN specimens s ON s.id = c.specimen_id")}
    report.counts.update(specimens=db.count("specimens"), captures=len(captures),
                         generation=db.generation)
    model_id, dim = db.model_id, db.setting("embedding_dim")
    if captures and not (model_id and dim):
        report.add("embedding", "captures exist but no model is recorded; run `specimen-id reindex`")
        return captures
    embedded = set()
    for cid, mid, vector in db.vectors.rows():
        who = _who(captures.get(cid), cid)
        if mid != model_id:
            report.add("stray", f"{who}: stray embedding of another model ({mid})")
            continue
        embedded.add(cid)
        if vector.size != int(dim):
            report.add("embedding", f"{who}: embedding has {vector.size} values, not {dim}", capture_id=cid)
            continue
        if not np.all(np.isfinite(vector)):
            report.add("embedding", f"{who}: embedding holds NaN or infinite values", capture_id=cid)
        elif abs(float(np.linalg.norm(vector)) - 1) > NORM_TOLERANCE:
            report.add("embedding", f"{who}: embedding is not unit length "
                                    f"(norm {np.linalg.norm(vector):.4f})", capture_id=cid)
    for cid in sorted(set(captures) - embedded):
        report.add("embedding", f"{_who(captures[cid], cid)}: no embedding for model {model_id}", capture_id=cid)
    versions = dict(db.db.execute("SELECT capture_id, version FROM local_features").fetchall())
    for cid in sorted(captures):
        if versions.get(cid) != feature_version:
            found = f"version {versions[cid]}" if cid in versions else "none"
            report.add("features", f"{_who(captures[cid], cid)}: no local features of version "
                                   f"{feature_version} ({found}); `specimen-id reindex --features-only` "
                                   "or `repair` recomputes them", capture_id=cid)
    return captures


def _check_index(db, report: Report) -> None:
    """The index file against the embeddings it is built from (the index's own source), id by
    id and vector by vector."""
    path = db.vectors.path
    model_id, dim, generation = db.model_id, db.setting("embedding_dim"), db.generation
    if not model_id:
        return
    index = FaissIndex.load(path)
    if index is None:
        state = "missing" if not path.exists() else "unreadable"
        report.add("index", f"{path.name} is {state}; it is rebuilt from the database on next "
                            "use (or by `repair`)", problem=False, path=path)
        return
    if not index.describes(generation, model_id):
        report.add("index", f"{path.name} is stale (generation {index.generation}, model "
                            f"{index.model_id}; the database is at {generation}, {model_id}); it is "
                            "rebuilt on next use (or by `repair`)", problem=False, path=path)
        return
    try:
        ids, vectors = db.vectors.stored(model_id, int(dim))
    except ValueError:
        report.add("index", f"{path.name} not compared: the stored embeddings are damaged (above)")
        return
    held, held_vectors = index.contents()
    if index.dim != int(dim) or len(held) != len(ids):
        report.add("index", f"{path.name} claims generation {generation} but holds {len(held)} "
                            f"vectors of {index.dim} values; the database has {len(ids)} of {dim}", path=path)
        return
    order = np.argsort(held)
    missing, extra = set(ids.tolist()) - set(held.tolist()), set(held.tolist()) - set(ids.tolist())
    if missing or extra:
        report.add("index", f"{path.name} disagrees with the database: captures "
                            f"{sorted(missing)} missing, {sorted(extra)} not in the database", path=path)
        return
    if held_vectors is None:
        return  # IVF lists keep no id -> vector map and compact codes are lossy: ids only
    differ = ids[~np.all(held_vectors[order] == vectors, axis=1)]
    if len(differ):
        report.add("index", f"{path.name} holds other vectors than the database for captures "
                            f"{differ.tolist()}", path=path)


def check_images(db, report: Report, captures: dict, digest, named) -> set[str]:
    """Every managed image (of captures and logged queries) is present, named for its content
    and has that content (`digest(key)`: the SHA-256 of what is kept under it, None when
    nothing is; `named(key)`: the image as messages name it); returns the referenced keys."""
    referenced = set()

    def foreign(who: str, key, **facts) -> bool:
        """A recorded key that names no managed image (a hand-edited or foreign database) is
        named, and never read: verify must not open files the database does not manage."""
        if isinstance(key, str) and IMAGE_KEY.match(key):  # the one rule for what a database may point at
            return False
        report.add("image", f"{who}: recorded image key {key!r} is not a managed image name", **facts)
        return True

    for cid, row in sorted(captures.items()):
        who = _who(row, cid)
        key = row["image_key"]
        if foreign(who, key, capture_id=cid):
            continue
        referenced.add(key)
        actual = digest(key)
        if actual is None:
            report.add("image", f"{who}: {named(key)} is missing", capture_id=cid)
        elif actual != row["file_sha256"]:
            report.add("image", f"{who}: {named(key)} was altered (its SHA-256 is "
                                f"{actual[:12]}…, recorded {row['file_sha256'][:12]}…)", capture_id=cid)
        elif not key.startswith(f"{row['file_sha256']}."):
            report.add("image", f"{who}: {named(key)} is not named for its content", capture_id=cid)
    for quuid, key, sha in db.db.execute(
            "SELECT uuid, image_key, file_sha256 FROM queries WHERE image_key IS NOT NULL"):
        if foreign(f"logged query {quuid}", key):
            continue
        referenced.add(key)
        actual = digest(key)
        if actual != sha:
            state = "is missing" if actual is None else "was altered"
            report.add("image", f"logged query {quuid}: {named(key)} {state}")
    report.counts["files"] = len(referenced)
    return referenced


def _check_leftovers(root: Path, referenced: set[str], report: Report) -> None:
    for path in working_folders(root):
        where = path.name if path.parent == root else f"../{path.name}"
        state = "left by an interrupted" if abandoned(path) else "of a running"
        report.add("temp", f"{where}: working folder {state} export or import (a whole copy of the "
                           "database)", problem=False, path=path)
    for path in leftovers(root, referenced):
        rel = path.relative_to(root)
        if path.name.endswith(".tmp"):
            report.add("temp", f"{rel}: temporary file left by an interrupted write", problem=False, path=path)
        else:
            report.add("orphan", f"{rel}: image file no capture or query refers to", problem=False, path=path)
    _check_renditions(root, {Path(r).stem for r in referenced}, report)


def leftovers(root: Path, referenced: set[str]) -> list[Path]:
    """Temporary files (files.write_atomic's `.NAME.*.tmp`) in the directory and under images/,
    and image files no row refers to."""
    found = [p for p in root.glob(".*.tmp") if p.is_file()]
    for path in _files(root / "images"):
        if path.name.endswith(".tmp") or path.relative_to(root).as_posix() not in referenced:
            found.append(path)
    return found


def _check_renditions(root: Path, shas: set[str], report: Report) -> None:
    """renditions/ in one pass: temporary files, renditions of no stored image (by its
    sha256), and damaged renditions of stored ones."""
    for path in _files(root / renditions.FOLDER):
        rel = path.relative_to(root)
        if path.name.endswith(".tmp"):
            report.add("temp", f"{rel}: temporary file left by an interrupted write", problem=False, path=path)
        elif renditions.source_sha(path) not in shas:
            report.add("orphan", f"{rel}: rendition of no stored image", problem=False, path=path)
        elif not renditions.sound(path):
            report.add("rendition", f"{rel}: damaged rendition (repair makes it again)", problem=False, path=path)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def _sha256(path: Path) -> str | None:
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except FileNotFoundError:
        return None
    except OSError:
        return "unreadable"


def _who(row: dict | None, cid: int) -> str:
    if row is None:
        return f"capture {cid} (no such capture)"
    return f"capture {row['uuid']} of {row['specimen']!r}"


def remove_leftovers(db, found: Report, rgb8) -> tuple[list[str], list[str]]:
    """What repair does with verify's file findings: damaged renditions made again (from
    `rgb8(image)`, the caller's decode), leftover files and abandoned working folders removed.
    Returns (what was fixed, what was not)."""
    fixed, unfixable, young = [], [], 0
    keys = None  # content -> image key, read once: a rendition is named for its image's content
    for f in found.findings:
        if f.kind == "rendition":  # its image is sound (verify checked): make it again from that
            if keys is None:
                keys = {str(key).partition(".")[0]: key for (key,) in db.db.execute(
                    "SELECT image_key FROM captures UNION SELECT image_key FROM queries WHERE image_key IS NOT NULL")}
            sha, name = renditions.source_sha(f.path), f.path.relative_to(db.root)
            f.path.unlink(missing_ok=True)
            try:
                image = managed(db.root, keys[sha]) if sha in keys else None
                if image is not None:
                    renditions.build(db.root, image, rgb8(image))
                    fixed.append(f"made {name} again")
                else:
                    unfixable.append(f"{name}: cannot be made again (no capture or query holds its image)")
            except (DatabaseDamaged, ImageRefused) as e:
                unfixable.append(f"{name}: cannot be made again ({e})")
        if f.kind not in ("orphan", "temp") or f.path is None:
            continue
        if f.path.is_dir():  # an export's or import's working folder
            if abandoned(f.path):
                shutil.rmtree(f.path, ignore_errors=True)
                fixed.append(f"removed {f.message.partition(':')[0]}")
            continue
        try:
            if time.time() - f.path.stat().st_mtime < LEFTOVER_MIN_AGE_S:
                young += 1
                continue
            f.path.unlink()
        except FileNotFoundError:
            continue
        fixed.append(f"removed {f.path.relative_to(db.root)}")
    if young:
        unfixable.append(f"kept {young} unreferenced file(s) younger than {LEFTOVER_MIN_AGE_S} s "
                         "(a running query may be about to refer to them); run repair again later")
    return fixed, unfixable

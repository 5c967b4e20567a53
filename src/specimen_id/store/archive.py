"""Backups: one self-describing tar archive of a database, and its restore into a new directory.

    manifest.json         format and software versions, schema version, model_id, score kind
                          and threshold, counts, and the sha256 and size of every other member
    specimens.sqlite      a consistent snapshot, taken with SQLite's online backup API: one read
                          transaction, so a process writing meanwhile neither waits nor shows
                          half of a change
    images/ab/<sha256>.*  every managed image the snapshot refers to

The FAISS index is not archived: it is derived, and rebuilt on import."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from pathlib import Path

from ..errors import DatabaseDamaged, DatabaseUnusable, SpecimenIdError
from .files import IMAGE_NAME, managed
from .schema import MIGRATIONS, schema_version
from .settings import now

# every image a database records: what an archive must carry
IMAGE_PATHS = ("SELECT image_path FROM captures UNION "
               "SELECT image_path FROM queries WHERE image_path IS NOT NULL")

FORMAT = "specimen-id archive"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SQLITE = "specimens.sqlite"
# the only member names an archive may hold: nothing can land outside the new directory
SUFFIXES = {".tar": "w", ".tar.gz": "w:gz", ".tgz": "w:gz"}


def export_archive(db, archive) -> dict:
    """Write `archive` (.tar, or .tar.gz / .tgz compressed) from a snapshot of `db`; returns the
    manifest. The archive appears whole or not at all; an existing file is never replaced."""
    from .. import __version__
    from ..search.score import DEFAULT_THRESHOLD, SCORE_KIND

    archive = Path(archive)
    mode = next((m for s, m in SUFFIXES.items() if archive.name.endswith(s)), None)
    if mode is None:
        raise SpecimenIdError(f"{archive}: an archive name ends in .tar, .tar.gz or .tgz")
    if archive.exists():
        raise SpecimenIdError(f"{archive} exists already; choose a new name (a backup is never overwritten)")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=archive.parent, prefix=f".{archive.name}.") as tmp:
        snapshot = Path(tmp) / SQLITE
        _snapshot(db.db.conn, snapshot)
        facts, images = _facts(snapshot, SCORE_KIND, DEFAULT_THRESHOLD)
        members = {SQLITE: _digest(snapshot.read_bytes())}
        part = Path(tmp) / "archive.part"
        with tarfile.open(part, mode) as tar:
            _add(tar, SQLITE, snapshot.read_bytes())
            for rel in images:
                try:
                    data = managed(db.root, rel).read_bytes()
                except FileNotFoundError:
                    raise DatabaseDamaged(f"{db.root / rel} is missing (purged meanwhile, or lost): "
                                          "nothing was written; run export again") from None
                members[rel] = _digest(data)
                if members[rel]["sha256"] != IMAGE_NAME.match(rel).group(2):  # see _recorded_images
                    raise DatabaseDamaged(f"{db.root / rel} does not hold the content its name says "
                                          "(damaged): nothing was written")
                _add(tar, rel, data)
            manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                        "software_version": __version__, "created_at": now(),
                        "source": str(db.root.resolve()), **facts, "members": members}
            _add(tar, MANIFEST, json.dumps(manifest, indent=1).encode())
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        try:
            os.link(part, archive)  # fails if the name was taken meanwhile: never overwrite
        except FileExistsError:
            raise SpecimenIdError(f"{archive} exists already; choose a new name") from None
        except OSError:  # no hard links (FAT/exFAT backup drives): the check above must do
            os.replace(part, archive)
    return manifest


def import_archive(archive, root) -> dict:
    """Restore an archive into `root`, a new or empty directory: every member is checked against
    the manifest in a temporary directory beside it, which becomes `root` only when all is
    well (then with a fresh index). Returns the manifest."""
    from .database import Database, database_dir

    archive, root = Path(archive), database_dir(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SpecimenIdError(f"{root} is not empty: import only into a new or empty database directory")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.import-"))
    try:
        manifest = _unpack(archive, tmp)
        version = _schema_version(tmp / SQLITE)
        if version > len(MIGRATIONS):
            raise DatabaseUnusable(f"{archive}: its database schema version {version} is newer than this "
                                   f"specimen-id understands ({len(MIGRATIONS)}); upgrade specimen-id; nothing imported")
        db = Database(tmp)  # migrates an archive of an older schema
        try:
            counts = _facts(tmp / SQLITE, "", 0)[0]["counts"]
            missing = [rel for rel in _recorded_images(db) if not (tmp / rel).is_file()]
            if missing:
                raise DatabaseDamaged(f"{archive}: the database refers to {len(missing)} image(s) the "
                                      f"archive does not hold (first: {missing[0]}); nothing imported")
            if counts != manifest.get("counts"):
                raise DatabaseDamaged(f"{archive}: the database holds {counts}, the manifest says "
                                      f"{manifest['counts']}")
            with db.writing():
                with db.unit_of_work():
                    db._audit("import", archive=archive.name, source=manifest.get("source"),
                              exported_at=manifest.get("created_at"), counts=counts)
                db.save_index()  # rebuilt from the stored embeddings
        finally:
            db.close()
        if root.exists():
            root.rmdir()
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _schema_version(path: Path) -> int:
    con = sqlite3.connect(path)
    try:
        return schema_version(con)
    except sqlite3.DatabaseError as e:
        raise DatabaseDamaged(f"{path.name} in the archive cannot be read ({e}); nothing imported") from None
    finally:
        con.close()


def _recorded_images(db) -> list[str]:
    """Every image path the database records, each checked to be a managed name (raises
    DatabaseDamaged otherwise: never follow a path out of the images/ folder)."""
    rows = db.db.execute(IMAGE_PATHS).fetchall()
    for (rel,) in rows:
        managed(db.root, rel)
    return [rel for (rel,) in rows]


def _unpack(archive: Path, into: Path) -> dict:
    """Extract and check every member; raises DatabaseDamaged naming the archive."""
    found, manifest = {}, None
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if member.name == MANIFEST and member.isfile():
                    manifest = json.loads(tar.extractfile(member).read())
                    continue
                if not member.isfile() or not (member.name == SQLITE or IMAGE_NAME.match(member.name)):
                    raise DatabaseDamaged(f"{archive}: unexpected member {member.name!r}; nothing imported")
                data = tar.extractfile(member).read()
                found[member.name] = _digest(data)
                (into / member.name).parent.mkdir(parents=True, exist_ok=True)
                (into / member.name).write_bytes(data)
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        if isinstance(e, OSError) and e.filename:
            raise  # a file of ours (the archive's absence, our disk), not the archive's content
        raise DatabaseDamaged(f"{archive}: not a readable specimen-id archive ({e}); nothing imported") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatabaseDamaged(f"{archive}: no specimen-id manifest; nothing imported")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise DatabaseDamaged(f"{archive}: archive format {manifest['format_version']} is newer than "
                              "this specimen-id reads; upgrade specimen-id")
    expected = manifest.get("members", {})
    for name in sorted(set(expected) | set(found)):
        if name not in found:
            raise DatabaseDamaged(f"{archive}: {name} is missing; nothing imported")
        if found[name] != expected.get(name):
            raise DatabaseDamaged(f"{archive}: {name} does not match its sha256/size in the manifest "
                                  "(damaged or altered); nothing imported")
    return manifest


def _snapshot(conn: sqlite3.Connection, path: Path) -> None:
    """A self-contained copy of the database as of one moment (backup API, one step)."""
    target = sqlite3.connect(path)
    try:
        conn.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal beside it
        if target.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise DatabaseDamaged("the database fails SQLite's quick_check; nothing was written")
    finally:
        target.close()


def _facts(path: Path, score_kind: str, default_threshold: float) -> tuple[dict, list[str]]:
    """What the manifest says about a snapshot, and the managed images it refers to."""
    con = sqlite3.connect(path)
    try:
        def one(sql):
            return con.execute(sql).fetchone()[0]

        settings = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM settings")}
        stored = settings.get("threshold")
        threshold = stored["value"] if isinstance(stored, dict) and stored.get("score_kind") == score_kind \
            else default_threshold
        facts = {"schema_version": one("PRAGMA user_version"), "model_id": settings.get("model_id"),
                 "score_kind": score_kind, "threshold": threshold,
                 "counts": {"specimens": one("SELECT COUNT(*) FROM specimens WHERE removed_at IS NULL"),
                            "removed_specimens": one("SELECT COUNT(*) FROM specimens WHERE removed_at IS NOT NULL"),
                            "captures": one("SELECT COUNT(*) FROM captures"),
                            "embeddings": one("SELECT COUNT(*) FROM embeddings"),
                            "queries": one("SELECT COUNT(*) FROM queries")}}
        images = sorted({r[0] for r in con.execute(IMAGE_PATHS)})
    finally:
        con.close()
    return facts, images


def _digest(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


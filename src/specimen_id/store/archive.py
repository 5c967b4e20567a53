"""Backups: one self-describing tar archive of a database, and its restore into a new directory.

    manifest.json         first: format and software versions, schema version, model_id, score
                          kind and threshold, counts, and the sha256 and size of every other
                          member, so an import checks each member's size before extracting it
    specimens.sqlite      a consistent snapshot, taken with SQLite's online backup API: one read
                          transaction, so a process writing meanwhile neither waits nor shows
                          half of a change
    images/ab/<sha256>.*  every managed image the snapshot refers to

The FAISS index is not archived: it is derived, and rebuilt on import. Nor are renditions.

An archive is not trusted: members are streamed to disk within a budget (a small archive
cannot expand into gigabytes), each against its declared size and sha256, images against the
content their names say, and the database may hold only the tables and indexes this
specimen-id's migrations make (a trigger or view from elsewhere would run on our writes)."""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

from ..errors import DatabaseDamaged, DatabaseUnusable, SpecimenIdError
from .files import IMAGE_NAME, IN_USE, image_relpath, in_use, managed
from .schema import MIGRATIONS, migrate, schema_version
from .settings import now

# every image a database records: what an archive must carry
IMAGE_KEYS = ("SELECT image_key FROM captures UNION "
              "SELECT image_key FROM queries WHERE image_key IS NOT NULL")

FORMAT = "specimen-id archive"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SQLITE = "specimens.sqlite"
# how far an archive may expand on import: its own size times this, or the floor if larger
EXPANSION = 20
EXPANSION_FLOOR = 200_000_000
MAX_MANIFEST = 64_000_000
MAX_HEADER = 65_536  # a long name or pax header is read whole by tarfile: ours are far smaller
SUFFIXES = {".tar": "w", ".tar.gz": "w:gz", ".tgz": "w:gz"}


def export_archive(db, archive, facts: dict, software_version: str, source: str | None = None) -> dict:
    """Write `archive` (.tar, or .tar.gz / .tgz compressed) from a snapshot of `db`, with the
    caller's `facts` (what the stored settings mean: the threshold that applies) in its
    manifest, which it returns (`source`: the database it names, when not this directory). The
    archive appears whole or not at all; an existing file is never replaced."""
    archive = Path(archive)
    mode = next((m for s, m in SUFFIXES.items() if archive.name.endswith(s)), None)
    if mode is None:
        raise SpecimenIdError(f"{archive}: an archive name ends in .tar, .tar.gz or .tgz")
    if archive.exists():
        raise SpecimenIdError(f"{archive} exists already; choose a new name (a backup is never overwritten)")
    archive.parent.mkdir(parents=True, exist_ok=True)
    # the snapshot is made inside the database directory, where verify sees (and repair
    # removes) what an export killed midway leaves; the archive is written beside its name
    with tempfile.TemporaryDirectory(dir=db.root, prefix=".export-", suffix=".tmp") as tmp, in_use(tmp):
        snapshot = Path(tmp) / SQLITE
        _snapshot(db.db.conn, snapshot)
        counted, keys = _facts(snapshot)
        images = _image_files(db.root, keys)  # (a key that names no managed image: nothing is written)
        members = {SQLITE: _file_digest(snapshot)}
        for rel in images:  # hashed before writing: the manifest goes first
            try:
                members[rel] = _file_digest(db.root / rel)
            except FileNotFoundError:
                raise DatabaseDamaged(f"{db.root / rel} is missing (purged meanwhile, or lost): "
                                      "nothing was written; run export again") from None
            if members[rel]["sha256"] != IMAGE_NAME.match(rel).group(2):  # see _recorded_images
                raise DatabaseDamaged(f"{db.root / rel} does not hold the content its name says "
                                      "(damaged): nothing was written")
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                    "software_version": software_version, "created_at": now(),
                    "source": source or str(db.root.resolve()), **counted, **facts, "members": members}
        fd, name = tempfile.mkstemp(dir=archive.parent, prefix=f".{archive.name}.", suffix=".part")
        os.close(fd)
        part = Path(name)
        try:
            with tarfile.open(part, mode) as tar:
                _add(tar, MANIFEST, json.dumps(manifest, indent=1).encode())
                tar.add(snapshot, SQLITE)
                for rel in images:  # content-addressed and never modified: what was hashed
                    tar.add(db.root / rel, rel)
            with open(part, "rb") as f:
                os.fsync(f.fileno())
            try:
                os.link(part, archive)  # fails if the name was taken meanwhile: never overwrite
            except FileExistsError:
                raise SpecimenIdError(f"{archive} exists already; choose a new name") from None
            except OSError:  # no hard links (FAT/exFAT backup drives): the check above must do
                os.replace(part, archive)
        finally:
            part.unlink(missing_ok=True)
    return manifest


def import_archive(archive, root) -> dict:
    """Restore an archive into `root`, a new or empty directory: every member is checked against
    the manifest in a temporary directory beside it, which becomes `root` only when all is
    well (then with a fresh index). Returns the manifest."""
    from .database import database_dir

    archive, root = Path(archive), database_dir(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SpecimenIdError(f"{root} is not empty: import only into a new or empty database directory")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.import-"))
    try:
        with in_use(tmp):
            manifest = _restore(archive, tmp)
        (tmp / IN_USE).unlink(missing_ok=True)
        if root.exists():
            root.rmdir()
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _restore(archive: Path, tmp: Path) -> dict:
    """Unpack and check an archive into `tmp`, which then holds a whole database."""
    from .database import Database

    manifest = _unpack(archive, tmp)
    _check_database(archive, tmp / SQLITE)
    db = Database(tmp)  # migrates an archive of an older schema
    try:
        counts = _facts(tmp / SQLITE)[0]["counts"]
        missing = [rel for rel in _recorded_images(db) if not (tmp / rel).is_file()]
        if missing:
            raise DatabaseDamaged(f"{archive}: the database refers to {len(missing)} image(s) the "
                                  f"archive does not hold (first: {missing[0]}); nothing imported")
        if counts != manifest.get("counts"):
            raise DatabaseDamaged(f"{archive}: the database holds {counts}, the manifest says "
                                  f"{manifest['counts']}")
        with db.unit_of_work():
            db._audit("import", archive=archive.name, source=manifest.get("source"),
                      exported_at=manifest.get("created_at"), counts=counts)
        with db.writing():
            db.vectors.sync()  # rebuilt from the stored embeddings
    finally:
        db.close()
    return manifest


def _recorded_images(db) -> list[str]:
    """The file of every image key the database records, each key checked to be a managed
    name (raises DatabaseDamaged otherwise: never follow a path out of the images/ folder)."""
    return _image_files(db.root, [key for (key,) in db.db.execute(IMAGE_KEYS)])


def _image_files(root: Path, keys: list[str]) -> list[str]:
    """Where these image keys' files lie under root (images/ab/<key>), every key checked first
    to be a managed name (else DatabaseDamaged: never follow a path out of images/)."""
    for key in keys:
        managed(root, key)
    return [image_relpath(key) for key in keys]


class _BoundedHeaders(tarfile.TarInfo):
    """tarfile reads a GNU long-name or pax header member whole into memory before it yields
    the next member: refuse one larger than any archive of ours holds."""

    def _proc_gnulong(self, tarfile_):
        self._bounded()
        return super()._proc_gnulong(tarfile_)

    def _proc_pax(self, tarfile_):
        self._bounded()
        return super()._proc_pax(tarfile_)

    def _bounded(self):
        if self.size > MAX_HEADER:
            raise tarfile.HeaderError(f"a {self.size}-byte header member")


def _unpack(archive: Path, into: Path) -> dict:
    """Extract and check every member, streamed; raises DatabaseDamaged naming the archive."""
    if not archive.is_file():  # /dev/zero, a pipe, a folder: nothing a tar reader should follow
        raise DatabaseDamaged(f"{archive}: not a regular file; give an archive `specimen-id export` wrote")
    budget = min(max(EXPANSION_FLOOR, EXPANSION * archive.stat().st_size), shutil.disk_usage(into).free)
    found, manifest, total = {}, None, 0
    try:
        with tarfile.open(archive, "r:*", tarinfo=_BoundedHeaders) as tar:
            for member in tar:
                if member.name == MANIFEST and member.isfile() and manifest is None:
                    if member.size > MAX_MANIFEST:
                        raise DatabaseDamaged(f"{archive}: its manifest is {member.size} bytes; nothing imported")
                    manifest = _manifest(archive, tar.extractfile(member).read())
                    continue
                if not member.isfile() or not (member.name == SQLITE or IMAGE_NAME.match(member.name)):
                    raise DatabaseDamaged(f"{archive}: unexpected member {member.name[:200]!r}; nothing imported")
                declared = manifest["members"].get(member.name) if manifest else None
                if manifest is not None and (declared is None or declared.get("size") != member.size):
                    raise DatabaseDamaged(f"{archive}: {member.name} is not in the manifest, or not at the "
                                          "size it declares (damaged or altered); nothing imported")
                total += member.size
                if total > budget:
                    raise DatabaseDamaged(f"{archive}: it would expand to more than {budget / 1e6:.0f} MB "
                                          f"({EXPANSION}x its size, or the free disk space); nothing imported")
                found[member.name] = _extract(tar, member, into / member.name)
                image = IMAGE_NAME.match(member.name)
                if image and found[member.name]["sha256"] != image.group(2):
                    raise DatabaseDamaged(f"{archive}: {member.name} does not hold the content its name says; "
                                          "nothing imported")
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError) as e:
        if isinstance(e, OSError) and e.filename:
            raise  # a file of ours (the archive's absence, our disk), not the archive's content
        reason = " ".join(str(e).split())  # tarfile's may span lines
        raise DatabaseDamaged(f"{archive}: not a readable specimen-id archive ({reason}); nothing imported") from None
    if manifest is None:
        raise DatabaseDamaged(f"{archive}: no specimen-id manifest; nothing imported")
    expected = manifest["members"]
    for name in sorted(set(expected) | set(found)):
        if name not in found:
            raise DatabaseDamaged(f"{archive}: {name} is missing; nothing imported")
        if found[name] != expected.get(name):
            raise DatabaseDamaged(f"{archive}: {name} does not match its sha256/size in the manifest "
                                  "(damaged or altered); nothing imported")
    return manifest


def _manifest(archive: Path, data: bytes) -> dict:
    """The manifest, refused unless it is one of ours in a format this version reads."""
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError):
        raise DatabaseDamaged(f"{archive}: its manifest is not readable JSON; nothing imported") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatabaseDamaged(f"{archive}: no specimen-id manifest; nothing imported")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DatabaseDamaged(f"{archive}: archive format {version!r} is not a version number; nothing imported")
    if version > FORMAT_VERSION:
        raise DatabaseDamaged(f"{archive}: archive format {version} is newer than this specimen-id reads "
                              f"({FORMAT_VERSION}); upgrade specimen-id")
    members = manifest.get("members")
    if not isinstance(members, dict) or not all(
            isinstance(m, dict) and isinstance(m.get("sha256"), str) and isinstance(m.get("size"), int)
            for m in members.values()) or not isinstance(manifest.get("counts"), dict):
        raise DatabaseDamaged(f"{archive}: its manifest does not list members and counts; nothing imported")
    return manifest


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> dict:
    """Stream one member to a file; returns its digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        return _digest(tar.extractfile(member), out)


def _check_database(archive: Path, path: Path) -> None:
    """The archive's database is at a schema version this specimen-id reads, and holds exactly
    what our migrations make at that version: no trigger, view or table from elsewhere, nothing
    missing."""
    def objects(con) -> dict:
        return {(kind, name): " ".join((sql or "").split()) for kind, name, sql in con.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}

    reference = sqlite3.connect(":memory:")
    con = sqlite3.connect(path)
    try:
        version = schema_version(con)
        if version > len(MIGRATIONS):
            raise DatabaseUnusable(f"{archive}: its database schema version {version} is newer than this "
                                   f"specimen-id understands ({len(MIGRATIONS)}); upgrade specimen-id; nothing imported")
        migrate(reference, upto=version)
        expected, found = objects(reference), objects(con)
    except sqlite3.DatabaseError as e:
        raise DatabaseDamaged(f"{archive}: its database cannot be read ({e}); nothing imported") from None
    finally:
        reference.close()
        con.close()
    for kind, name in sorted(set(found) - set(expected)):
        raise DatabaseDamaged(f"{archive}: its database holds a {kind} {name!r} that specimen-id does not "
                              "make; nothing imported")
    for kind, name in sorted(set(expected) - set(found), key=lambda k: (k[0] != "table", k)):  # tables first
        raise DatabaseDamaged(f"{archive}: its database lacks the {kind} {name!r}; nothing imported")
    for key in sorted(expected):
        if expected[key] != found[key]:
            raise DatabaseDamaged(f"{archive}: its database defines the {key[0]} {key[1]!r} differently from "
                                  "specimen-id; nothing imported")


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


def _facts(path: Path) -> tuple[dict, list[str]]:
    """What the manifest says about a snapshot, and the image keys it records."""
    con = sqlite3.connect(path)
    try:
        def one(sql):
            return con.execute(sql).fetchone()[0]

        model_id = con.execute("SELECT value FROM settings WHERE key = 'model_id'").fetchone()
        facts = {"schema_version": one("PRAGMA user_version"), "model_id": json.loads(model_id[0]) if model_id else None,
                 "counts": {"specimens": one("SELECT COUNT(*) FROM specimens WHERE removed_at IS NULL"),
                            "removed_specimens": one("SELECT COUNT(*) FROM specimens WHERE removed_at IS NOT NULL"),
                            "captures": one("SELECT COUNT(*) FROM captures"),
                            "embeddings": one("SELECT COUNT(*) FROM embeddings"),
                            "queries": one("SELECT COUNT(*) FROM queries")}}
        images = sorted({r[0] for r in con.execute(IMAGE_KEYS)})
    finally:
        con.close()
    return facts, images


def _file_digest(path: Path) -> dict:
    with open(path, "rb") as f:
        return _digest(f)


def _digest(source, copy_to=None) -> dict:
    """sha256 and size of a stream, read in blocks (and written to `copy_to` as it goes)."""
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: source.read(1 << 20), b""):
        digest.update(block)
        size += len(block)
        if copy_to is not None:
            copy_to.write(block)
    return {"sha256": digest.hexdigest(), "size": size}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


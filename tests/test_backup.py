"""Backups: export an archive (also while another process writes), import it elsewhere, and get
the same database, the same ids and the same answers; damaged archives change nothing."""

import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time

from conftest import QUERIES, SPECIMENS
from filelock import FileLock, Timeout

from specimen_id.search.score import DEFAULT_THRESHOLD
from specimen_id.store import Database
from specimen_id.store.files import image_relpath
from specimen_id.store.vectors import FaissIndex

TABLES = {"specimens": "id, uuid, name, metadata, notes, created_at, removed_at",
          "captures": "id, uuid, specimen_id, file_sha256, image_key",
          "embeddings": "capture_id, model_id, vector", "local_features": "capture_id, version, data",
          "queries": "id, uuid, decision, specimen_id, candidates", "reviews": "id, query_id, verdict"}


def _rows(root):
    con = sqlite3.connect(root / "specimens.sqlite")
    try:
        return {t: con.execute(f"SELECT {cols} FROM {t} ORDER BY 1").fetchall() for t, cols in TABLES.items()}
    finally:
        con.close()


def _answers(run, db):
    result = run("query", "--json", *sorted(QUERIES.iterdir()), db=db)
    assert result.exit_code == 0, result.output
    keep = ("query", "decision", "specimen", "score", "threshold", "candidates", "exact")
    return [{k: a[k] for k in keep} for a in map(json.loads, result.stdout.splitlines())]


def _members(archive):
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def test_an_imported_archive_is_the_same_database_and_gives_the_same_answers(enrolled, tmp_path):
    enrolled("remove", "brightfield-a")  # removed specimens travel too, still removed
    first = json.loads(enrolled("query", "--json", QUERIES / "recapture-he-tissue-a.jpg").stdout)
    assert enrolled("review", first["query_id"], "confirmed", "--by", "ada").exit_code == 0
    answers = _answers(enrolled, enrolled.db)
    before = _rows(enrolled.db)

    archive = tmp_path / "backup.tar.gz"
    exported = enrolled("export", archive)
    assert exported.exit_code == 0, exported.output
    assert "exported 5 specimen(s) (1 removed), 8 capture(s), 9 logged" in exported.stdout
    members = _members(archive)
    manifest = json.loads(members.pop("manifest.json"))
    assert manifest["format"] == "specimen-id archive" and manifest["format_version"] == 1
    assert manifest["schema_version"] == sqlite3.connect(enrolled.db / "specimens.sqlite").execute(
        "PRAGMA user_version").fetchone()[0]
    assert manifest["model_id"] == Database(enrolled.db).model_id and manifest["threshold"] == DEFAULT_THRESHOLD
    assert manifest["counts"]["captures"] == 8 and manifest["counts"]["queries"] == 9
    assert set(manifest["members"]) == set(members) and "index.faiss" not in members
    for name, data in members.items():
        assert manifest["members"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    # every managed image is there: enrolled ones and logged queries' copies
    on_disk = {str(p.relative_to(enrolled.db)) for p in (enrolled.db / "images").rglob("*.*")}
    assert set(members) - {"specimens.sqlite"} == on_disk

    target = tmp_path / "elsewhere" / "db"
    imported = enrolled("import", archive, db=target)
    assert imported.exit_code == 0, imported.output
    assert "every file matched the manifest" in imported.stdout
    assert not [p for p in target.parent.iterdir() if p.name != "db"]  # no temporary left behind
    after = _rows(target)
    for table in TABLES:  # the same ids, uuids, vectors, logged decisions, reviews
        assert after[table] == before[table], table
    index = FaissIndex.load(target / "index.faiss")
    assert index is not None and len(index) == 7  # rebuilt, removed specimen left out
    assert _answers(enrolled, target) == answers
    assert enrolled("list", db=target).stdout == enrolled("list").stdout
    trail = json.loads(enrolled("audit", "--limit", "1", "--json", db=target).stdout)
    assert trail["action"] == "import" and trail["changes"]["archive"] == "backup.tar.gz"
    # the removed specimen can be restored there, and answers again
    assert enrolled("restore", "brightfield-a", db=target).exit_code == 0
    found = json.loads(enrolled("query", "--json", QUERIES / "recapture-brightfield-a.jpg", db=target).stdout)
    assert (found["decision"], found["specimen"]) == ("match", "brightfield-a")


def _rewrite(archive, out, change):
    """A copy of the archive with `change(name, data)` applied to each member's bytes."""
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        for member in src:
            data = change(member.name, src.extractfile(member).read())
            if data is None:
                continue
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))


def _with_database(archive, out, change):
    """A copy of the archive with `change(path)` applied to its database file, the manifest's
    digest made to match (in a second pass: the manifest comes first)."""
    digests = {}

    def database(name, data):
        if name == "specimens.sqlite":
            path = out.with_suffix(".sqlite")
            path.write_bytes(data)
            change(path)
            data = path.read_bytes()
            digests[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        return data

    def manifest(name, data):
        if name == "manifest.json":
            facts = json.loads(data)
            facts["members"].update(digests)
            data = json.dumps(facts).encode()
        return data

    _rewrite(archive, out.with_suffix(".pass1"), database)
    _rewrite(out.with_suffix(".pass1"), out, manifest)
    return out


def test_damaged_archives_and_occupied_targets_change_nothing(run, tmp_path):
    assert run("enroll", "-s", "a", SPECIMENS / "he-tissue-a" / "capture-1.png").exit_code == 0
    archive = tmp_path / "a.tar"
    assert run("export", archive).exit_code == 0
    again = run("export", archive)
    assert again.exit_code == 1 and "exists already" in again.stderr
    assert run("export", tmp_path / "a.zip").exit_code == 1

    def flip(prefix):
        return lambda name, data: data[:-1] + bytes([data[-1] ^ 1]) if name.startswith(prefix) else data

    bad = {"altered image": (flip("images/"), "does not hold the content its name says"),
           "altered database": (flip("specimens.sqlite"), "does not match its sha256/size"),
           "missing image": (lambda n, d: None if n.startswith("images/") else d, "is missing"),
           "no manifest": (lambda n, d: None if n == "manifest.json" else d, "no specimen-id manifest"),
           "stray member": (lambda n, d: d, None)}
    for case, (change, message) in bad.items():
        damaged = tmp_path / f"{case}.tar"
        _rewrite(archive, damaged, change)
        if case == "stray member":
            with tarfile.open(damaged, "a") as tar:
                info = tarfile.TarInfo("../../outside.txt")
                info.size = 2
                tar.addfile(info, io.BytesIO(b"hi"))
            message = "unexpected member '../../outside.txt'"
        target = tmp_path / "target" / case
        result = run("import", damaged, db=target)
        assert result.exit_code == 3 and message in result.stderr and "nothing imported" in result.stderr, case
        assert not target.exists() and not list((tmp_path / "target").iterdir()), case
    assert not (tmp_path / "outside.txt").exists()
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(archive.read_bytes()[:5000])
    assert run("import", truncated, db=tmp_path / "t").exit_code == 3
    (tmp_path / "text.tar").write_text("not an archive")
    result = run("import", tmp_path / "text.tar", db=tmp_path / "t")
    assert result.exit_code == 3 and "not a readable specimen-id archive" in result.stderr
    # a database directory in use is never overwritten; an empty one is fine
    occupied = run("import", archive)
    assert occupied.exit_code == 1 and "is not empty" in occupied.stderr
    assert run("list").stdout.split() == ["a"]
    (tmp_path / "empty").mkdir()
    assert run("import", archive, db=tmp_path / "empty").exit_code == 0
    assert run("list", db=tmp_path / "empty").stdout.split() == ["a"]


def _captures(root):
    con = sqlite3.connect(root / "specimens.sqlite")
    try:
        return con.execute("SELECT COUNT(*) FROM captures").fetchone()[0]
    finally:
        con.close()


def _lock_held(root):
    """Whether another process holds the database's write lock right now."""
    try:
        with FileLock(str(root / "write.lock")).acquire(timeout=0):
            return False
    except Timeout:
        return True


def test_export_while_another_process_enrols_is_a_consistent_snapshot(run, tmp_path):
    # 6 specimens of 10 captures each; each specimen is committed in one transaction
    source = tmp_path / "incoming"
    files = [p for p in sorted(SPECIMENS.rglob("*.png"))][:10]
    for k in range(6):
        (source / f"s{k}").mkdir(parents=True)
        for i, f in enumerate(files):
            shutil.copy(f, source / f"s{k}" / f"{i}.png")
    assert run("enroll", "-s", "first", SPECIMENS / "fluo-nuclei-c" / "capture-1.png").exit_code == 0
    writer = subprocess.Popen([sys.executable, "-m", "specimen_id.cli", "--db", str(run.db), "enroll",
                               "--folders", str(source), "--allow-duplicate"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ)
    while not _lock_held(run.db) and writer.poll() is None:
        time.sleep(0.05)  # wait until it writes (after its model has loaded)
    archives, during, last = [], 0, None
    while writer.poll() is None or not archives:
        committed = _captures(run.db)
        if committed == last and writer.poll() is None:
            time.sleep(0.05)  # one export per state the writer commits is enough
            continue
        last = committed
        held = _lock_held(run.db)
        archive = tmp_path / f"snap{len(archives)}.tar"
        assert run("export", archive).exit_code == 0
        during += held and _lock_held(run.db)  # the writer held the lock all along this export
        archives.append(archive)
    out, err = writer.communicate()
    assert writer.returncode == 0, err.decode()
    assert during >= 1, "no export ran while the other process was writing"
    final_sizes = dict(sqlite3.connect(run.db / "specimens.sqlite").execute(
        "SELECT s.name, COUNT(*) FROM captures c JOIN specimens s ON s.id = c.specimen_id GROUP BY s.name"))
    assert len(final_sizes) == 7 and min(final_sizes.values()) >= 1
    seen = set()
    for archive in archives:
        target = tmp_path / "restored" / archive.stem
        result = run("import", archive, db=target)
        assert result.exit_code == 0, result.output
        con = sqlite3.connect(target / "specimens.sqlite")
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        captures = con.execute("SELECT COUNT(*) FROM captures").fetchone()[0]
        # whole specimens only (enrolment commits each folder in one transaction), never half
        sizes = dict(con.execute("SELECT s.name, COUNT(*) FROM captures c JOIN specimens s "
                                 "ON s.id = c.specimen_id GROUP BY s.name"))
        assert all(sizes[name] == final_sizes[name] for name in sizes), sizes
        for table in ("embeddings", "local_features"):
            assert con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == captures
        keys = [r[0] for r in con.execute("SELECT image_key FROM captures")]
        assert all((target / image_relpath(k)).is_file() for k in keys)
        assert len(FaissIndex.load(target / "index.faiss")) == captures
        seen.add(captures)
    assert len(seen) >= 2  # the snapshots saw the enrolment at different points
    final = tmp_path / "final.tar"
    assert run("export", final).exit_code == 0
    assert run("import", final, db=tmp_path / "final").exit_code == 0
    assert len(FaissIndex.load(tmp_path / "final" / "index.faiss")) == sum(final_sizes.values())
    print(f"{len(archives)} exports during enrolment ({during} wholly inside the writer's lock); "
          f"capture counts seen: {sorted(seen)}")


def test_an_archive_whose_rows_point_outside_its_images_is_refused(run, tmp_path):
    """Consistent hashes are not enough: a database row naming `../victim.txt` (which purge
    would delete and the web app would serve) makes the import fail, and nothing is touched."""
    assert run("enroll", "-s", "a", SPECIMENS / "he-tissue-a" / "capture-1.png").exit_code == 0
    archive = tmp_path / "a.tar"
    assert run("export", archive).exit_code == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    def hostile(path):
        with sqlite3.connect(path) as con:
            con.execute("UPDATE captures SET image_key = ?", [os.path.relpath(victim, tmp_path / "target")])

    _with_database(archive, tmp_path / "hostile.tar", hostile)
    result = run("import", tmp_path / "hostile.tar", db=tmp_path / "target")
    assert result.exit_code == 3 and "is not a managed image name" in result.stderr
    assert not (tmp_path / "target").exists() and victim.read_text() == "precious"

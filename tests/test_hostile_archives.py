"""`import` does not trust an archive: a small file that would expand into gigabytes, a device
instead of a file, a database carrying a trigger, view or table of its own or lacking one of
ours, an image whose content is not what its name says, a malformed manifest. Each is refused
with one line and exit 3, and nothing is left behind; what a killed export or import leaves
is reported by verify and removed by repair."""

import gzip
import hashlib
import io
import json
import subprocess
import sys
import os
import shutil
import sqlite3
import tarfile
import time

import pytest
from conftest import SPECIMENS
from filelock import FileLock
from test_backup import _rewrite, _with_database


@pytest.fixture
def archive(run, tmp_path):
    assert run("enroll", "-s", "a", SPECIMENS / "he-tissue-a" / "capture-1.png").exit_code == 0
    path = tmp_path / "a.tar"
    assert run("export", path).exit_code == 0
    return path


def _refused(run, tmp_path, archive, expected):
    target = tmp_path / "target"
    result = run("import", archive, db=target)
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert not target.exists() and not list(tmp_path.glob(".target.import-*"))


def _manifest(data, digests):
    manifest = json.loads(data)
    manifest["members"].update(digests)
    return json.dumps(manifest).encode()


def test_the_manifest_comes_first(archive):
    with tarfile.open(archive) as tar:
        assert tar.getnames()[0] == "manifest.json"


def test_a_small_archive_that_would_expand_to_gigabytes_is_refused_before_extracting(run, tmp_path):
    bomb = tmp_path / "bomb.tar.gz"
    zeros = 300_000_000
    with gzip.open(bomb, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        info = tarfile.TarInfo("specimens.sqlite")
        info.size = zeros

        class Zeros(io.RawIOBase):
            left = zeros

            def readable(self):
                return True

            def readinto(self, buffer):
                n = min(len(buffer), self.left)
                buffer[:n] = bytes(n)
                self.left -= n
                return n

        tar.addfile(info, io.BufferedReader(Zeros(), 1 << 20))
    assert bomb.stat().st_size < 2_000_000
    _refused(run, tmp_path, bomb, "would expand to more than 200 MB")


def test_a_device_is_not_read_as_an_archive(run, tmp_path):
    _refused(run, tmp_path, "/dev/zero", "not a regular file")


@pytest.mark.parametrize("statement, expected", [
    ("CREATE TRIGGER steer AFTER INSERT ON audit BEGIN UPDATE captures SET image_key = '../x'; END;",
     "holds a trigger 'steer'"),
    ("CREATE VIEW peek AS SELECT * FROM captures;", "holds a view 'peek'"),
    ("CREATE TABLE extra (x);", "holds a table 'extra'"),
    ("DROP TABLE overlaps;", "lacks the table 'overlaps'"),
    ("DROP TABLE settings;", "lacks the table 'settings'")])
def test_a_database_with_objects_we_did_not_make_is_refused(run, tmp_path, archive, statement, expected):
    def run_statement(path):
        with sqlite3.connect(path) as con:
            con.executescript(statement)

    _refused(run, tmp_path, _with_database(archive, tmp_path / "changed.tar", run_statement), expected)


def test_an_image_whose_content_is_not_its_name_is_refused(run, tmp_path, archive):
    other = (SPECIMENS / "he-tissue-b" / "capture-1.png").read_bytes()
    digests = {}

    def swap(name, data):
        if name.startswith("images/"):
            digests[name] = {"sha256": hashlib.sha256(other).hexdigest(), "size": len(other)}
            return other
        return data

    _rewrite(archive, tmp_path / "pass1.tar", swap)
    _rewrite(tmp_path / "pass1.tar", tmp_path / "swapped.tar",
             lambda name, data: _manifest(data, digests) if name == "manifest.json" else data)
    _refused(run, tmp_path, tmp_path / "swapped.tar", "does not hold the content its name says")


@pytest.mark.parametrize("manifest, expected", [
    (b"[" * 200_000, "its manifest is not readable JSON"),
    (None, "archive format '2' is not a version number")])
def test_a_malformed_manifest_is_refused(run, tmp_path, archive, manifest, expected):
    def change(name, data):
        if name != "manifest.json":
            return data
        if manifest is not None:
            return manifest
        return json.dumps({**json.loads(data), "format_version": "2"}).encode()

    _rewrite(archive, tmp_path / "bad.tar", change)
    _refused(run, tmp_path, tmp_path / "bad.tar", expected)


def test_working_folders_of_killed_exports_and_imports_are_reported_and_removed(run, archive, tmp_path):
    db = run.db
    export_left = db / ".export-k1ll3d.tmp"  # what an export killed midway leaves inside the database
    import_left = db.parent / f".{db.name}.import-k1ll3d"  # and an import into it, beside it
    running = db / ".export-running.tmp"
    for folder in (export_left, import_left, running):
        folder.mkdir()
        shutil.copy(db / "specimens.sqlite", folder / "specimens.sqlite")
        os.utime(folder, (time.time() - 3600,) * 2)  # a young one may be about to take its lock
    with FileLock(str(running / ".in-use.lock")):  # an export still at work
        result = run("verify")
        assert result.exit_code == 0
        assert "notice: .export-k1ll3d.tmp: working folder left by an interrupted export or import" in result.output
        assert f"notice: ../{import_left.name}: working folder left by an interrupted" in result.output
        assert "notice: .export-running.tmp: working folder of a running export or import" in result.output
        assert run("repair").exit_code == 0
        assert not export_left.exists() and not import_left.exists() and running.exists()
    os.utime(running, (time.time() - 3600,) * 2)  # its export long gone
    assert run("repair").exit_code == 0 and not running.exists()
    assert "notice" not in run("verify").output


def test_a_huge_long_name_header_is_refused_without_reading_it(run, tmp_path):
    """tarfile reads a GNU long-name member whole: 150 MB of name in a 150 KB archive."""
    bomb = tmp_path / "longname.tar.gz"
    size = 150_000_000
    header = tarfile.TarInfo("././@LongLink")
    header.type, header.size = tarfile.GNUTYPE_LONGNAME, size
    with gzip.open(bomb, "wb", compresslevel=1) as gz:
        gz.write(header.tobuf(format=tarfile.GNU_FORMAT))
        for _ in range(size // 1_000_000):
            gz.write(b"a" * 1_000_000)
        gz.write(bytes(-size % 512 + 1024))
    assert bomb.stat().st_size < 1_000_000
    _refused(run, tmp_path, bomb, "not a readable specimen-id archive")
    # and in a process of its own, its peak memory stays far below the 150 MB of name
    peak = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", "specimen_id.cli", "--db",
                           str(tmp_path / "t2"), "import", str(bomb)], capture_output=True, text=True, check=True)
    rc, kb = map(int, peak.stdout.split())
    assert rc == 3 and kb < 150_000 + _baseline_kb()


PEAK = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:], capture_output=True).returncode; "
        "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def _baseline_kb() -> int:
    """Peak of a command that reads no archive at all (the interpreter and our imports)."""
    out = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", "specimen_id.cli", "--version"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[1])


def test_a_corrupted_compressed_archive_is_refused(run, tmp_path, archive):
    compressed = tmp_path / "a.tar.gz"
    compressed.write_bytes(gzip.compress(archive.read_bytes()))
    data = bytearray(compressed.read_bytes())
    for at in range(200, len(data) - 200, len(data) // 7):  # damage in several places
        data[at] ^= 0xFF
    damaged = tmp_path / "damaged.tar.gz"
    damaged.write_bytes(bytes(data))
    _refused(run, tmp_path, damaged, "nothing imported")

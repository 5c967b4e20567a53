"""A disk that fills during a long enrolment: one line and exit 3 saying how many captures were
committed, a database that verifies, and the same command finishing the rest once there is
room; the web app answers 507 or 503, never 500. The disk is filled for real, by a file-size
limit (RLIMIT_FSIZE) on the process: writes fail with EFBIG, which SQLite reports as an I/O
error (a full disk's ENOSPC it reports as SQLITE_FULL, produced here by max_page_count)."""

import re
import resource
import signal
import sqlite3
import subprocess
import sys

import cv2
import pytest
from conftest import SPECIMENS

from specimen_id.errors import storage_failure

LIMIT = 1_000_000  # bytes any one file may reach: the write-ahead log passes it after a batch or two
CLI = [sys.executable, "-m", "specimen_id.cli"]


def _limited():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), no kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


@pytest.fixture
def captures(tmp_path):
    """40 distinct real captures: five windows of each sample capture."""
    folder = tmp_path / "session"
    folder.mkdir()
    for source in sorted(SPECIMENS.rglob("*.png")):
        pixels = cv2.imread(str(source))
        h, w = pixels.shape[:2]
        for i in range(5):
            window = pixels[i * h // 20: h - (4 - i) * h // 20, i * w // 20: w - (4 - i) * w // 20]
            cv2.imwrite(str(folder / f"{source.parent.name}-{source.stem}-{i}.png"), window)
    return sorted(folder.iterdir())


def test_a_disk_that_fills_mid_enrolment_stops_cleanly_and_the_rerun_finishes(tmp_path, captures):
    db = str(tmp_path / "db")
    warm = subprocess.run([*CLI, "--db", db, "enroll", "-s", "warm-up", str(SPECIMENS / "he-tissue-a" / "capture-1.png")],
                          capture_output=True, text=True)  # the model is made before the disk is limited
    assert warm.returncode == 0, warm.stderr
    enrol = [*CLI, "--db", db, "enroll", "-s", "session", "--allow-low-quality", *map(str, captures)]
    full = subprocess.run(enrol, capture_output=True, text=True, preexec_fn=_limited)
    assert full.returncode == 3, full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "is the disk full or failing?" in errors[0] and "Traceback" not in full.stderr
    committed = int(re.search(r"\((\d+) capture\(s\) of this run were committed", errors[0]).group(1))
    assert 0 < committed < len(captures) and committed % 16 == 0  # whole batches, nothing half-written
    check = subprocess.run([*CLI, "--db", db, "verify"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    again = subprocess.run(enrol, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"enrolled {len(captures) - committed}, skipped {committed} " in again.stdout
    listed = subprocess.run([*CLI, "--db", db, "show", "session"], capture_output=True, text=True).stdout
    assert f"{len(captures)} capture(s)" in listed


WEB_ENROL = """
import sys
from pathlib import Path
from fastapi.testclient import TestClient
from specimen_id.web import create_app
client = TestClient(create_app(sys.argv[1]), base_url="http://127.0.0.1")
files = [("files", (Path(p).name, Path(p).read_bytes())) for p in sys.argv[2:]]
reply = client.post("/api/enrol", data={"specimen": "web", "allow_low_quality": "true"}, files=files,
                    headers={"Origin": "http://127.0.0.1"})
print(reply.status_code, reply.json().get("error", ""))
"""


def test_the_web_app_answers_507_when_the_disk_is_full(tmp_path, captures):
    db = str(tmp_path / "db")
    warm = subprocess.run([*CLI, "--db", db, "enroll", "-s", "warm-up", str(SPECIMENS / "he-tissue-a" / "capture-1.png")],
                          capture_output=True, text=True)
    assert warm.returncode == 0, warm.stderr
    reply = subprocess.run([sys.executable, "-c", WEB_ENROL, db, *map(str, captures)], capture_output=True,
                           text=True, preexec_fn=_limited)
    assert reply.returncode == 0, reply.stderr
    assert reply.stdout.split()[0] in ("503", "507") and "is the disk full or failing?" in reply.stdout


def test_sqlite_full_and_read_only_are_told_as_such(tmp_path):
    con = sqlite3.connect(tmp_path / "small.sqlite")
    con.execute("CREATE TABLE t (x BLOB)")
    con.execute("PRAGMA max_page_count = 3")  # what SQLite answers when the disk has no room
    with pytest.raises(sqlite3.OperationalError) as full:
        con.execute("INSERT INTO t VALUES (zeroblob(100000))")
    failed = storage_failure(full.value, tmp_path)
    assert failed.full and failed.exit_code == 3 and str(failed).startswith(f"{tmp_path}: the disk is full")
    con.execute("PRAGMA query_only = 1")  # what SQLite answers for a read-only file or mount
    with pytest.raises(sqlite3.OperationalError) as read_only:
        con.execute("INSERT INTO t VALUES (1)")
    failed = storage_failure(read_only.value, tmp_path)
    assert not failed.full and "cannot be written (read-only" in str(failed)
    assert storage_failure(sqlite3.OperationalError("no such table: x"), tmp_path) is None


@pytest.mark.parametrize("args", [("rename", "warm-up", "renamed"), ("config", "threshold", "0.5"),
                                  ("export", "{tmp}/backup.tar"), ("import-csv", "{tmp}/names.csv"),
                                  ("remove", "warm-up")])
def test_every_write_command_on_a_full_disk_says_so_in_one_line(tmp_path, args):
    db = str(tmp_path / "db")
    warm = subprocess.run([*CLI, "--db", db, "enroll", "-s", "warm-up", str(SPECIMENS / "he-tissue-a" / "capture-1.png")],
                          capture_output=True, text=True)
    assert warm.returncode == 0, warm.stderr
    (tmp_path / "names.csv").write_text("name,notes\nwarm-up,a note\n")
    before = subprocess.run([*CLI, "--db", db, "show", "warm-up", "--json"], capture_output=True, text=True).stdout

    def tiny_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # no file may grow past 1000 bytes

    full = subprocess.run([*CLI, "--db", db, *(a.format(tmp=tmp_path) for a in args)], capture_output=True,
                          text=True, preexec_fn=tiny_disk)
    assert full.returncode == 3, (full.stdout, full.stderr)
    assert full.stderr.count("\n") == 1 and full.stderr.startswith("error: ") and "Traceback" not in full.stderr
    assert "is the disk full" in full.stderr or "the disk is full" in full.stderr
    check = subprocess.run([*CLI, "--db", db, "verify"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    after = subprocess.run([*CLI, "--db", db, "show", "warm-up", "--json"], capture_output=True, text=True).stdout
    assert after == before  # nothing half-written

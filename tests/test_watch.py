"""`watch`: a camera app's folder, handled by content, once, across restarts; partial files,
duplicates and non-images each get one line. The long-running mode runs as a real process
fed by a writer that saves files slowly and reuses names."""

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import QUERIES, SPECIMENS

import specimen_id
from specimen_id.store import Database

FIELDS = [sorted(d.iterdir())[0] for d in sorted(SPECIMENS.iterdir())]


def _captures(db_dir):
    with Database(db_dir) as db:
        return db.count("captures")


def test_once_handles_each_content_once_and_remembers_it(run, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(FIELDS[0], inbox / "IMG_0001.png")
    shutil.copy(FIELDS[1], inbox / "IMG_0002.png")
    shutil.copy(FIELDS[0], inbox / "IMG_0001 copy.png")  # same content, another name
    (inbox / "notes.txt").write_text("stage at x=12.5 y=3.1\n")
    (inbox / "IMG_0003.png").write_bytes(FIELDS[2].read_bytes()[:5000])  # cut short
    (inbox / ".IMG_0004.png.tmp").write_bytes(b"being written")  # hidden: the app's temp file

    result = run("watch", inbox, "--enroll", "slide", "--once")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert sum(line.startswith("enrolled: ") for line in lines) == 2
    (dup,) = [line for line in lines if line.startswith("skipped: ")]
    assert "already enrolled" in dup and "IMG_0001" in dup
    assert f"refused: {inbox / 'notes.txt'}: is not an image (no known image format in its content)" in lines
    assert any(line.startswith(f"refused: {inbox / 'IMG_0003.png'}: ") for line in lines)
    assert _captures(run.db) == 2

    # a restart handles nothing twice: every file's content is already recorded
    again = run("watch", inbox, "--enroll", "slide", "--once")
    assert again.exit_code == 0
    assert len(again.stdout.splitlines()) == 5
    assert all(line.startswith("skipped: ") for line in again.stdout.splitlines())
    assert _captures(run.db) == 2


def test_once_queries_by_default(enrolled, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(FIELDS[3], inbox / "shot.png")
    result = enrolled("watch", inbox, "--once")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"match: {inbox / 'shot.png'}: {FIELDS[3].parent.name} (score ")


class _Watch:
    """`specimen-id watch` as a real process, its lines collected by a reader thread."""

    def __init__(self, db, folder, *args):
        # PYTHONFAULTHANDLER: a watcher that hangs is made to print every thread's stack (ended())
        env = {**os.environ, "PYTHONPATH": str(Path(specimen_id.__file__).parents[1]), "PYTHONFAULTHANDLER": "1"}
        # as from a terminal, Ctrl-C reaches it: a test run started in the background of a
        # script ignores SIGINT, and a child inherits that (it then slept through Ctrl-C)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "specimen_id.cli", "--db", str(db), "watch", str(folder),
             "--interval", "0.2", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines, self._queue = [], queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, prefix, deadline=180):
        """The next line starting with prefix (every line read is kept in self.lines)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                assert self.proc.poll() is None, "\n".join(self.lines)
                continue
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        pytest.fail(f"no line {prefix!r} in:\n" + "\n".join(self.lines))

    def stop(self):
        self.proc.terminate()
        return self.ended()

    def ended(self, timeout=60):
        """The exit code once the watcher has ended; one still running after `timeout` is
        aborted, and the test fails with the stacks it printed."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(timeout=30)
            self._reader.join(timeout=10)  # to the end of what it printed
            pytest.fail("the watcher did not end:\n" + "\n".join(self.lines + list(self._queue.queue)))
        self._reader.join(timeout=10)
        while not self._queue.empty():
            self.lines.append(self._queue.get_nowait())
        return self.proc.returncode


def _write_slowly(path, data, pieces=4, pause=0.7):
    """A camera app saving over a slow link: the file exists half-written for a while (each
    pause is longer than the watcher's 2 polls of settling)."""
    with open(path, "wb") as f:
        step = len(data) // pieces + 1
        for start in range(0, len(data), step):
            f.write(data[start:start + step])
            f.flush()
            os.fsync(f.fileno())
            time.sleep(pause)


def test_a_running_watch_waits_for_complete_files_follows_content_and_resumes(tmp_path):
    db, inbox = tmp_path / "db", tmp_path / "inbox"
    inbox.mkdir()
    watch = _Watch(db, inbox, "--enroll", "slide")
    try:
        watch.wait_for("watching ")
        _write_slowly(inbox / "IMG_0001.png", FIELDS[0].read_bytes())
        first = watch.wait_for("enrolled: ")
        assert first == f"enrolled: {inbox / 'IMG_0001.png'} as a capture of slide"
        # the app reuses the name for the next shot: new content, handled again
        _write_slowly(inbox / "IMG_0001.png", FIELDS[1].read_bytes())
        assert watch.wait_for("enrolled: ") == first
        # the first shot again under a new name: same content, skipped
        _write_slowly(inbox / "IMG_0002.png", FIELDS[0].read_bytes(), pieces=1)
        assert "already enrolled" in watch.wait_for("skipped: ")
        (inbox / "readme.txt").write_text("not a capture")
        assert watch.wait_for("refused: ") == f"refused: {inbox / 'readme.txt'}: is not an image " \
                                              "(no known image format in its content)"
    finally:
        assert watch.stop() == 0
    assert not any(line.startswith("refused:") and ".png" in line for line in watch.lines), watch.lines
    assert _captures(db) == 2

    # restarted: what is in the folder was handled before, so nothing is enrolled again
    again = _Watch(db, inbox, "--enroll", "slide")
    try:
        assert "already" in again.wait_for("skipped: ")
        assert "already" in again.wait_for("skipped: ")
        assert "already" in again.wait_for("skipped: ")
        _write_slowly(inbox / "IMG_0003.png", FIELDS[2].read_bytes())
        assert again.wait_for("enrolled: ") == f"enrolled: {inbox / 'IMG_0003.png'} as a capture of slide"
    finally:
        assert again.stop() == 0
    assert _captures(db) == 3


def test_content_is_handled_once_per_action_not_once_for_all(enrolled, tmp_path):
    """A shot first only queried is still enrolled by a later `watch --enroll`, and one
    enrolled under one specimen is not thereby handled for another."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(QUERIES / "never-enrolled-1.jpg", inbox / "new.jpg")
    queried = enrolled("watch", inbox, "--once")
    assert queried.exit_code == 0 and queried.stdout.startswith("no_match: ")
    first = enrolled("watch", inbox, "--once", "--enroll", "first", "--allow-low-quality")
    assert first.exit_code == 0 and first.stdout.startswith("enrolled: "), first.output
    assert len(Database(enrolled.db).captures(Database(enrolled.db).specimen("first")["id"])) == 1
    assert enrolled("watch", inbox, "--once", "--enroll", "first").stdout.startswith("skipped: ")
    assert enrolled("watch", inbox, "--once").stdout.startswith("skipped: ")


def test_enrol_stores_the_bytes_that_were_hashed(run, tmp_path):
    """The file is read once: what is enrolled is what was hashed and recorded, even if the
    camera app has already saved the next shot under the same name."""
    from specimen_id import images
    from specimen_id.service import Service
    from specimen_id.watch import Watcher, enrol_action

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(FIELDS[0], inbox / "shot.png")
    with Database(run.db) as db:
        act = enrol_action(Service(db), "slide")

        def overwritten_first(capture, path):
            shutil.copy(FIELDS[1], path)  # the next shot lands between read and enrol
            return act(capture, path)

        overwritten_first.key = act.key
        Watcher(db, inbox, overwritten_first, lambda line: None, settle=0, patience=0).poll()
        (capture,) = db.captures(db.specimen("slide")["id"])
        assert capture["file_sha256"] == images.load(FIELDS[0]).file_sha256


def test_watch_waits_while_another_writer_holds_the_database(tmp_path):
    """A reindex holding the write lock for minutes: the watcher keeps the file, says so once a
    minute, enrols it once the lock is free, and stops cleanly on Ctrl-C."""
    db, inbox = tmp_path / "db", tmp_path / "inbox"
    inbox.mkdir()
    Database(db).close()
    holder = Database(db)
    os.environ["SPECIMEN_ID_LOCK_TIMEOUT"] = "1"  # each attempt gives up after a second
    try:
        watch = _Watch(db, inbox, "--enroll", "slide")
    finally:
        del os.environ["SPECIMEN_ID_LOCK_TIMEOUT"]
    try:
        watch.wait_for("watching ")
        with holder.writing():
            shutil.copy(FIELDS[0], inbox / "IMG_0001.png")
            waiting = watch.wait_for("waiting: ")
            assert waiting.startswith(f"waiting: {inbox / 'IMG_0001.png'}: ") and "Ctrl-C" in waiting
            time.sleep(5)  # several more attempts fail meanwhile, and say nothing more
        assert watch.wait_for("enrolled: ") == f"enrolled: {inbox / 'IMG_0001.png'} as a capture of slide"
        assert sum(line.startswith("waiting: ") for line in watch.lines) == 1
        watch.proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert watch.ended() == 0
    finally:
        holder.close()
        if watch.proc.poll() is None:
            watch.stop()
    assert _captures(db) == 1


def test_a_one_off_pass_while_the_database_is_locked(enrolled, tmp_path):
    """--once does not wait: a query is answered and logged once (it needs no lock), an
    enrolment stops with one line and exit 3, and the file is handled by the next pass."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(QUERIES / "recapture-he-tissue-a.jpg", inbox / "shot.jpg")
    holder = Database(enrolled.db)
    with holder.writing():
        queried = enrolled("watch", inbox, "--once", env={"SPECIMEN_ID_LOCK_TIMEOUT": "1"})
        assert queried.exit_code == 0 and queried.stdout.startswith(f"match: {inbox / 'shot.jpg'}: he-tissue-a")
        enrolling = enrolled("watch", inbox, "--once", "--enroll", "he-tissue-a", env={"SPECIMEN_ID_LOCK_TIMEOUT": "1"})
        assert enrolling.exit_code == 3 and "is being written by another process" in enrolling.stderr
    holder.close()
    with Database(enrolled.db) as db:
        assert db.count("queries") == 1
    again = enrolled("watch", inbox, "--once", "--enroll", "he-tissue-a")
    assert again.exit_code == 0 and again.stdout.startswith(f"enrolled: {inbox / 'shot.jpg'}")

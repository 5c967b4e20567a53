"""Curation racing another writer: each change reads what it depends on (names, existence,
removal) under the write lock, in the same unit of work as the change, so a second writer that
changes those facts first makes it fail with one clear error instead of misfiling data.

Written against the store's interface (open, unit_of_work, the curation methods), so a second
storage backend can run the same races. Each race: this test holds the write lock; a thread
starts a curation, which must wait for the lock; while it waits, the test makes the change
that races it and lets go. Whatever the thread's timing, it must then see that change."""

import sqlite3
import threading
import time

import numpy as np
import pytest
from conftest import SPECIMENS

from specimen_id.errors import SpecimenIdError, SpecimenRemoved, UnknownSpecimen
from specimen_id.local_features import FEATURE_VERSION
from specimen_id.store import Database

BACKENDS = {"directory": lambda root: Database(root)}


@pytest.fixture(params=sorted(BACKENDS))
def store(request, enrolled):
    """Open a store of the enrolled sample (a new connection per call, as a second process has)."""
    enrolled("enroll", "-s", "extra", SPECIMENS / "he-tissue-b" / "capture-1.png", "--allow-duplicate")
    return lambda: BACKENDS[request.param](enrolled.db)


def _race(store, change, racing):
    """Run `change(store)` in a thread while this test holds the write lock and does `racing`;
    returns what the thread raised (or None)."""
    outcome = {}

    def run():
        db = store()
        try:
            change(db)
            outcome["error"] = None
        except Exception as e:  # noqa: BLE001 - the race's outcome is what we check
            outcome["error"] = e
        finally:
            db.close()

    holder = store()
    with holder.writing():
        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(0.5)  # let it reach the lock (its outcome must not depend on this)
        racing(holder)
    thread.join(60)
    holder.close()
    return outcome["error"]


def _consistent(store):
    db = store()
    try:
        report = db.verify(FEATURE_VERSION)
        assert not report.problems, [str(p) for p in report.problems]
        index = db.vectors.loaded()
        active = {c["id"] for s in db.specimens() for c in db.captures(s["id"])}
        found = index.search(np.stack(list(db.vectors.vectors_of(sorted(active)).values())), 1)
        assert found is not None
    finally:
        db.close()


def test_merge_into_a_specimen_removed_meanwhile_fails_and_moves_nothing(store):
    error = _race(store, lambda db: db.merge_specimens("extra", "he-tissue-a"),
                  lambda db: db.remove_specimen("he-tissue-a"))
    assert isinstance(error, SpecimenRemoved)
    db = store()
    assert len(db.captures(db.specimen("extra")["id"])) == 1
    db.close()
    _consistent(store)


def test_move_into_a_specimen_removed_meanwhile_fails(store):
    db = store()
    capture = db.captures(db.specimen("extra")["id"])[0]["uuid"]
    db.close()
    error = _race(store, lambda db: db.move_capture(capture, "he-tissue-a"),
                  lambda db: db.remove_specimen("he-tissue-a"))
    assert isinstance(error, SpecimenRemoved)
    db = store()
    assert [c["uuid"] for c in db.captures(db.specimen("extra")["id"])] == [capture]
    db.close()
    _consistent(store)


def test_chained_merges_end_in_one_clear_error(store):
    error = _race(store, lambda db: db.merge_specimens("extra", "he-tissue-a"),
                  lambda db: db.merge_specimens("he-tissue-a", "he-tissue-b"))
    assert isinstance(error, UnknownSpecimen) and "he-tissue-a" in str(error)
    db = store()
    assert len(db.captures(db.specimen("he-tissue-b")["id"])) == 3
    db.close()
    _consistent(store)


def test_rename_to_a_name_enrolled_meanwhile_says_it_exists(store):
    error = _race(store, lambda db: db.rename_specimen("extra", "new-slide"),
                  lambda db: db.ensure_specimen("new-slide"))
    assert isinstance(error, SpecimenIdError) and "exists already" in str(error)
    db = store()
    assert db.specimen("extra")["name"] == "extra"
    db.close()


def test_edit_and_review_of_a_specimen_merged_away_meanwhile_fail(store):
    error = _race(store, lambda db: db.edit_specimen("extra", {"stain": "x"}, ""),
                  lambda db: db.merge_specimens("extra", "he-tissue-b"))
    assert isinstance(error, UnknownSpecimen)
    db = store()
    assert "stain" not in db.specimen("he-tissue-b")["metadata"]
    db.close()


def test_a_write_outside_a_unit_of_work_fails_loudly(store):
    db = store()
    for write in ("UPDATE specimens SET notes = 'x'", "DELETE FROM overlaps",
                  "INSERT INTO settings(key, value) VALUES ('x', '1')", "CREATE TABLE extra (x)"):
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            db.db.execute(write)
    with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
        db.db["specimens"].insert({"uuid": "u", "name": "sneaked in", "created_at": "now"})
    with db.unit_of_work():  # the same write inside one is fine
        db.db.execute("UPDATE specimens SET notes = 'x' WHERE name = 'extra'")
    assert db.specimen("extra")["notes"] == "x"
    db.close()

"""Crash safety: real `specimen-id` processes killed with SIGKILL at seeded random moments of
`enroll`, `remove`, `reindex` and `calibrate` leave a database that opens, passes verify and
holds exactly the work committed before the kill; the same `enroll` run again finishes the rest.

Trials (14 processes): 6 enrolments of 20 files (3 killed at a random moment from launch, 3 at a
random moment after their first image lands), 4 removals (a removal takes about half a second), 2 re-indexings, 2 calibrations."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SPECIMENS

from specimen_id.cli import cli
from specimen_id.indexer.enroll import BATCH
from specimen_id.local_features import FEATURE_VERSION
from specimen_id.models.preprocess import to_rgb8
from specimen_id.simulate import Recapture
from specimen_id.store import Database

BATCH_FILES = 20
RNG = random.Random(6)  # every kill moment in this file comes from here


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The sample specimens enrolled, and 40 new captures to enrol in the trials."""
    from specimen_id import images

    root = tmp_path_factory.mktemp("crash")
    result = CliRunner().invoke(cli, ["--db", str(root / "db"), "enroll", "--folders", str(SPECIMENS)])
    assert result.exit_code == 0, result.output
    rng = np.random.default_rng(6)
    sources = sorted(SPECIMENS.rglob("*.png"))
    files = []
    for i in range(BATCH_FILES):
        rgb = to_rgb8(images.load(sources[i % len(sources)]).pixels)
        files.append(root / "batch" / f"new-{i:02}.jpg")
        files[-1].parent.mkdir(exist_ok=True)
        files[-1].write_bytes(Recapture().jpeg_bytes(rgb, rng))
    return root / "db", files


def _copy(template, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(template[0], target)
    return target


def _launch(db, *args):
    return subprocess.Popen([sys.executable, "-m", "specimen_id.cli", "--db", str(db), *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _files_under(path):
    return sum(len(files) for _, _, files in os.walk(path))


def _kill_at_random(proc, db, window, after_first_image=False) -> str:
    """SIGKILL `proc` at a random moment within `window` seconds (from launch, or from when its
    first new image file appears); returns whether it was killed or had finished."""
    if after_first_image:
        before = _files_under(db / "images")
        while proc.poll() is None and _files_under(db / "images") == before:
            time.sleep(0.01)
    deadline = time.monotonic() + RNG.uniform(0, window)
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    outcome = "finished" if proc.poll() is not None else "killed"
    if outcome == "killed":
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return outcome


def _assert_sound(db):
    """Opens, and verify finds no problem (notices, i.e. leftovers of the kill, are allowed)."""
    with Database(db) as opened:
        report = opened.verify(FEATURE_VERSION)
    assert not report.problems, "\n".join(map(str, report.problems))


def _captures_of(db, name):
    with Database(db) as opened:
        try:
            return opened.captures(opened.specimen(name)["id"])
        except Exception:
            return []


def test_killed_enrolment_keeps_whole_batches_and_a_rerun_finishes(template, tmp_path):
    db_template, files = template
    outcomes = []
    for trial in range(6):
        db = _copy(template, tmp_path, f"enrol-{trial}")
        # (every capture is enrolled whatever the quality gate says: this is about batches)
        proc = _launch(db, "enroll", "-s", "batch", "--allow-low-quality", *files)
        outcomes.append(_kill_at_random(proc, db, window=5 if trial < 3 else 2, after_first_image=trial >= 3))
        _assert_sound(db)
        stored = len(_captures_of(db, "batch"))
        # each batch is one transaction: whole batches or nothing
        assert stored in range(0, BATCH_FILES, BATCH) or stored == BATCH_FILES, stored
        assert len(_captures_of(db, "he-tissue-a")) == 2  # earlier work untouched
        result = CliRunner().invoke(cli, ["--db", str(db), "enroll", "-s", "batch", "--allow-low-quality",
                                          *map(str, files)])
        assert result.exit_code == 0, result.output
        captures = _captures_of(db, "batch")
        assert len(captures) == BATCH_FILES
        assert len({c["pixel_sha256"] for c in captures}) == BATCH_FILES  # no duplicates
        _assert_sound(db)
    print("enrol trials:", outcomes)


def test_killed_removal_removes_all_or_nothing(template, tmp_path):
    outcomes = []
    for trial in range(4):
        db = _copy(template, tmp_path, f"remove-{trial}")
        proc = _launch(db, "remove", "he-tissue-a")
        outcomes.append(_kill_at_random(proc, db, window=0.6))
        _assert_sound(db)
        assert len(_captures_of(db, "he-tissue-a")) in (0, 2)
        assert len(_captures_of(db, "he-tissue-b")) == 1
    print("remove trials:", outcomes)


def test_killed_reindex_keeps_every_embedding(template, tmp_path):
    outcomes = []
    for trial in range(2):
        db = _copy(template, tmp_path, f"reindex-{trial}")
        proc = _launch(db, "reindex")
        outcomes.append(_kill_at_random(proc, db, window=8))
        _assert_sound(db)  # verify checks every capture has its embedding and features
        with Database(db) as opened:
            assert opened.count("captures") == opened.count("embeddings") == 8
    print("reindex trials:", outcomes)


def test_killed_calibration_leaves_whole_reports(template, tmp_path):
    outcomes = []
    for trial in range(2):
        db = _copy(template, tmp_path, f"calibrate-{trial}")
        proc = _launch(db, "calibrate", "--min-genuine", "8")
        outcomes.append(_kill_at_random(proc, db, window=12))
        _assert_sound(db)
        report = db / "calibration" / "calibration.json"
        with Database(db) as opened:
            threshold = opened.setting("threshold")
        if report.exists():
            assert json.loads(report.read_text())["threshold"] == threshold["value"]
        assert threshold is None or set(threshold) >= {"value", "score_kind", "model_id", "calibration"}
    print("calibrate trials:", outcomes)

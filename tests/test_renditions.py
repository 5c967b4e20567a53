"""Pages show renditions: small JPEGs made once per image and size under renditions/, served
without decoding the capture again, left out of exports, deleted by purge, checked by verify
and made again by repair."""

import os
import tarfile
import time

import cv2
import numpy as np
import pytest
from conftest import SPECIMENS
from fastapi.testclient import TestClient

from specimen_id.store import Database
from specimen_id.store.renditions import SIZES
from specimen_id.web import create_app

LONG_AGO = time.time() - 3600


@pytest.fixture
def shown(enrolled):
    """A database whose capture of he-tissue-a has been shown in a page, with its client."""
    client = TestClient(create_app(enrolled.db), base_url="http://127.0.0.1")
    with Database(enrolled.db) as db:
        capture = db.captures(db.specimen("he-tissue-a")["id"])[0]
    enrolled.client, enrolled.capture = client, capture
    return enrolled


def _renditions(db_dir):
    return sorted(p for p in (db_dir / "renditions").rglob("*") if p.is_file())


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return pixels.shape[1], pixels.shape[0]


def test_thumbnails_are_made_once_and_served_as_files(shown):
    url = f"/images/capture/{shown.capture['uuid']}"
    assert _renditions(shown.db) == []
    first = shown.client.get(url, params={"size": 128})
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    made = _renditions(shown.db)
    assert len(made) == len(SIZES)  # every size from one decode
    assert max(_jpeg_size(first.content)) == min(SIZES, key=lambda s: abs(s - 128 * 2))
    stamps = [p.stat().st_mtime_ns for p in made]
    again = shown.client.get(url, params={"size": 128})
    assert again.content == first.content and [p.stat().st_mtime_ns for p in made] == stamps
    width, height = shown.capture["width"], shown.capture["height"]
    page = _jpeg_size(shown.client.get(url).content)  # the page view: never larger than the capture
    assert page == (width, height) if max(width, height) <= SIZES[-1] else max(page) == SIZES[-1]
    original = shown.client.get(url + "/original")
    assert original.content == (SPECIMENS / "he-tissue-a" / shown.capture["original_name"]).read_bytes()
    assert shown.client.get("/images/capture/not-a-uuid", params={"size": 256}).status_code == 404


def test_export_leaves_renditions_out_and_purge_deletes_them(shown, tmp_path):
    shown.client.get(f"/images/capture/{shown.capture['uuid']}", params={"size": 256})
    assert _renditions(shown.db)
    archive = tmp_path / "out.tar.gz"
    assert shown("export", archive).exit_code == 0
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert any(n.startswith("images/") for n in names) and not any("renditions" in n for n in names)
    assert shown("remove", "he-tissue-a").exit_code == 0
    assert shown("purge", "he-tissue-a").exit_code == 0
    assert _renditions(shown.db) == []


def test_verify_names_damaged_and_orphaned_renditions_and_repair_mends_them(shown):
    shown.client.get(f"/images/capture/{shown.capture['uuid']}", params={"size": 256})
    damaged = next(p for p in _renditions(shown.db) if p.name.endswith("-256.jpg"))
    whole = damaged.read_bytes()
    damaged.write_bytes(whole[: len(whole) // 2])  # a write cut short
    orphan = shown.db / "renditions" / "ee" / ("e" * 64 + "-512.jpg")
    orphan.parent.mkdir()
    orphan.write_bytes(whole)
    os.utime(orphan, (LONG_AGO, LONG_AGO))
    result = shown("verify")
    assert result.exit_code == 0, result.output  # derived files: notices, not problems
    rel = damaged.relative_to(shown.db)
    assert f"notice: {rel}: damaged rendition (repair makes it again)" in result.output
    assert f"notice: renditions/ee/{orphan.name}: rendition of no stored image" in result.output
    result = shown("repair")
    assert result.exit_code == 0 and f"made {rel} again" in result.output
    assert not orphan.exists() and damaged.read_bytes()[-2:] == b"\xff\xd9"
    assert _jpeg_size(damaged.read_bytes()) == _jpeg_size(whole)
    assert "notice" not in shown("verify").output

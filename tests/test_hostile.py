"""Hostile input: malformed, truncated and adversarial files, odd paths and bad metadata through
enrolment and query (CLI and Python API) are refused with one line naming the file, and leave
the database exactly as it was (SQLite content and image tree compared before and after).

Example counts (hypothesis, derandomized so CI is reproducible): 40 random-bytes-behind-a-magic-
number files and 30 truncated PNG/JPEG/TIFF files, each through CLI enrol, CLI query and the
Python API, under odd file names; plus fixed cases (declared-size bombs, empty file, directory,
symlinks, missing file, bad metadata)."""

import hashlib
import sqlite3
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner
from conftest import QUERIES, SPECIMENS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import specimen_id
from specimen_id.cli import cli
from specimen_id.errors import SpecimenIdError

MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"II*\x00", b"MM\x00*", b"BM", b"GIF89a",
          b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"P6\n", b"P5\n640 480\n255\n"]
NAMES = ["plain.png", "with spaces in it.jpg", "ünïcødé-標本-🔬.tif", "x" * 240 + ".png",
         "'; DROP TABLE captures;--.png", "<img src=x onerror=alert(1)>.jpg", "-leading-dash.png"]
SOURCES = {"png": (SPECIMENS / "he-tissue-a" / "capture-1.png").read_bytes(),
           "jpg": (QUERIES / "recapture-fluo-nuclei-a.jpg").read_bytes()}
SOURCES["tif"] = cv2.imencode(".tif", cv2.imdecode(
    __import__("numpy").frombuffer(SOURCES["png"], "uint8"), cv2.IMREAD_UNCHANGED))[1].tobytes()
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def db_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "db"
    result = CliRunner().invoke(cli, ["--db", str(root), "enroll", "--folders", str(SPECIMENS)])
    assert result.exit_code == 0, result.output
    return root


def state(db_dir: Path):
    """What the database holds: a hash of the SQLite dump and every image file with its hash."""
    conn = sqlite3.connect(db_dir / "specimens.sqlite")
    dump = hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    conn.close()
    files = sorted((p.relative_to(db_dir).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())
                   for p in (db_dir / "images").rglob("*") if p.is_file())
    return dump, files


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declared_bomb(width: int, height: int) -> bytes:
    """A tiny PNG that declares width x height pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + png_chunk(b"IEND", b""))


def refuse_everywhere(db_dir: Path, path: Path, shown: str | None = None):
    """Enrol and query `path` through the CLI and the Python API: each refuses it with one line
    naming it, and the database is unchanged."""
    shown = shown or str(path)
    before = state(db_dir)
    runner = CliRunner()
    result = runner.invoke(cli, ["--db", str(db_dir), "enroll", "-s", "hostile", "--", str(path)])
    assert result.exit_code == 1, result.output
    refusals = [line for line in result.stderr.splitlines()]
    assert len(refusals) == 1 and refusals[0].startswith(f"refused: {shown}: "), result.stderr
    assert result.stdout == "enrolled 0, skipped 0 (already enrolled), refused 1\n"
    result = runner.invoke(cli, ["--db", str(db_dir), "query", "--", str(path)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [refusals[0]] and result.stdout == ""
    with specimen_id.open_database(db_dir) as db:
        report = specimen_id.enroll(db, "hostile", [path])
        assert not report.enrolled and [e.path for e in report.refused] == [str(path)]
        answer = next(specimen_id.query(db, [path]))
        assert answer["decision"] == "refused" and answer["error"].startswith(f"{shown}: ")
    assert state(db_dir) == before


@SETTINGS
@given(magic=st.sampled_from(MAGICS), body=st.binary(max_size=4096), name=st.sampled_from(NAMES))
def test_random_bytes_behind_a_magic_number_are_refused(db_dir, magic, body, name):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(magic + body)
        refuse_everywhere(db_dir, path)


@settings(SETTINGS, max_examples=30)
@given(kind=st.sampled_from(sorted(SOURCES)), keep=st.floats(0, 1, exclude_max=True),
       name=st.sampled_from(NAMES))
def test_truncated_images_are_refused(db_dir, kind, keep, name):
    data = SOURCES[kind]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.{kind}"
        path.write_bytes(data[:int(len(data) * keep)])
        refuse_everywhere(db_dir, path)


@pytest.mark.parametrize("make", [
    lambda d: (d / "bomb.png", declared_bomb(100_000, 100_000)),
    lambda d: (d / "wide.png", declared_bomb(2**31 - 1, 1)),
    lambda d: (d / "tiff-bomb.tif", b"II*\x00\x08\x00\x00\x00\x03\x00" + struct.pack(
        "<HHII", 256, 4, 1, 200_000) + struct.pack("<HHII", 257, 4, 1, 200_000)
        + struct.pack("<HHII", 273, 4, 1, 0) + b"\0\0\0\0"),
    lambda d: (d / "empty.png", b""),
    lambda d: (d / "a folder.png", None),
    lambda d: (d / "missing.png", "missing"),
    lambda d: (d / "dangling-link.png", "dangling"),
    lambda d: (d / "link-to-folder.png", "folder-link"),
    lambda d: (d / "loop.png", "loop"),
])
def test_bombs_empty_files_folders_and_links_are_refused(db_dir, tmp_path, make):
    path, content = make(tmp_path)
    if content is None:
        path.mkdir()
    elif content == "dangling":
        path.symlink_to(tmp_path / "nowhere.png")
    elif content == "folder-link":
        path.symlink_to(tmp_path)
    elif content == "loop":
        path.symlink_to(path)
    elif content != "missing":
        path.write_bytes(content)
    refuse_everywhere(db_dir, path)


def test_a_refusal_is_one_line_from_a_real_process(db_dir, tmp_path):
    """OpenCV's decoders and Pillow's EXIF reader print their own complaints to the process's
    stderr unless silenced: a user must see one line per file."""
    paths = [tmp_path / "cut.png", tmp_path / "cut.tif"]
    paths[0].write_bytes(SOURCES["png"][:len(SOURCES["png"]) * 9 // 10])
    paths[1].write_bytes(SOURCES["tif"][:len(SOURCES["tif"]) // 2])
    done = subprocess.run([sys.executable, "-m", "specimen_id.cli", "--db", str(db_dir), "query", *map(str, paths)],
                          capture_output=True, text=True)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"refused: {path}: ") for line, path in zip(lines, paths))


@pytest.mark.parametrize("meta, error", [
    ("noequals", "'noequals' is not KEY=VALUE"),
    ("=value", "'=value' is not KEY=VALUE"),
])
def test_bad_metadata_on_the_command_line_is_refused(db_dir, meta, error):
    before = state(db_dir)
    result = CliRunner().invoke(cli, ["--db", str(db_dir), "enroll", "-s", "meta", "--meta", meta,
                                      str(QUERIES / "never-enrolled-1.jpg")])
    assert result.exit_code == 2 and error in result.stderr
    assert state(db_dir) == before


@pytest.mark.parametrize("metadata", [
    {"stain": object()}, {"nested": {"a": 1}}, {"": "empty key"}, {3: "number key"},
    {"gain": float("nan")}, ["not", "a", "mapping"],
])
def test_bad_metadata_through_the_python_api_is_refused(db_dir, metadata):
    before = state(db_dir)
    with specimen_id.open_database(db_dir) as db:
        for name in ("new-specimen", "he-tissue-a"):
            with pytest.raises(SpecimenIdError, match="metadata"):
                specimen_id.enroll(db, name, [QUERIES / "never-enrolled-1.jpg"], metadata)
    assert state(db_dir) == before

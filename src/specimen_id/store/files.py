"""Atomic file writes and the content-addressed copies of enrolled and queried images."""

from __future__ import annotations

import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import DatabaseDamaged

IN_USE = ".in-use.lock"
WORKING_MIN_AGE_S = 60
# the only keys a database may record for an image (what content_key makes), and the files
# they name under the database directory (what image_relpath makes)
IMAGE_KEY = re.compile(r"^[0-9a-f]{64}\.[A-Za-z0-9]{1,8}$")
IMAGE_NAME = re.compile(r"^images/([0-9a-f]{2})/(\1[0-9a-f]{62})\.[A-Za-z0-9]{1,8}$")


def write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync, then rename: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def in_use(folder):
    """Mark a working folder (an export's or an import's) as in use while the block runs:
    `repair` removes such a folder only when nobody holds it (one left by a killed process)."""
    from filelock import FileLock

    with FileLock(str(Path(folder) / IN_USE)):
        yield


def abandoned(folder: Path) -> bool:
    """A working folder no live process holds: its in-use lock is free (or was never taken)
    and it is over a minute old (a process may be between making it and locking it). Reads
    only: a missing lock file is not created."""
    from filelock import FileLock, Timeout

    lock = folder / IN_USE
    try:
        if time.time() - folder.stat().st_mtime < WORKING_MIN_AGE_S:
            return False
    except FileNotFoundError:
        return False  # finished meanwhile
    if not lock.exists():
        return True
    try:
        with FileLock(str(lock), timeout=0):
            return True
    except Timeout:
        return False


def working_folders(root: Path) -> list[Path]:
    """Working folders of exports of this database (inside it) and imports into it (beside it)."""
    found = list(root.glob(".export-*.tmp")) + list(root.parent.glob(f".{root.name}.import-*"))
    return sorted(p for p in found if p.is_dir())


def content_key(sha256: str, extension: str) -> str:
    """An image's key: its content, <sha256>.<ext>."""
    return f"{sha256}.{extension}"


def image_relpath(key: str) -> str:
    """images/ab/<key>: where the directory keeps it (two-letter fan-out keeps folders small)."""
    return f"images/{key[:2]}/{key}"


def managed(root: Path, key: str) -> Path:
    """The file a recorded image key names, refused unless it is a key: a database from
    elsewhere (an imported archive, a hand-edited file) must never make us read, serve or
    delete a file outside its images/ folder."""
    if not isinstance(key, str) or not IMAGE_KEY.match(key):
        raise DatabaseDamaged(f"{root}: recorded image key {key!r} is not a managed image name; "
                              "the database is damaged (run verify)")
    return root / image_relpath(key)


def store_image(root: Path, sha256: str, extension: str, data: bytes) -> str:
    """Keep a managed copy of an image file (once per content); returns its key."""
    key = content_key(sha256, extension)
    path = managed(root, key)
    if not path.exists():
        write_atomic(path, data)
    return key


class FileBlobs:
    """The directory backend's Blobs: each file kept once, by its content (key <sha256>.<ext>,
    file images/ab/<key>), with its renditions (thumbnails, made on demand) beside them."""

    def __init__(self, root: Path):
        self.root = root

    def put(self, data: bytes, sha256: str, extension: str) -> str:
        """Keep these bytes (once per content); returns their key."""
        return store_image(self.root, sha256, extension, data)

    def read(self, key: str) -> bytes:
        return self.file(key).read_bytes()

    def file(self, key: str) -> Path:
        """A local file that holds the blob (to stream or decode it); its key is checked to be
        a managed name, so a damaged row never makes us read outside images/."""
        return managed(self.root, key)

    def delete(self, key: str) -> bool:
        """Delete the blob and its renditions (purge: once no row refers to it); whether it
        was there."""
        from . import renditions

        path = self.file(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        renditions.delete(self.root, path)
        return True

    def rendition(self, key: str, size: int, rgb8) -> Path:
        """A JPEG file of the blob's image that fits `size` (0: the page view), made from
        `rgb8(file)` (the caller's decode) when missing."""
        from . import renditions

        return renditions.rendition(self.root, self.file(key), size, rgb8)


def tree_size(path: Path) -> int:
    """Bytes in a file, or in all files under a folder (0 when missing)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0

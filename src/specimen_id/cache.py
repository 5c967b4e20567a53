"""Where specimen-id keeps what it can make again, per user: converted networks, and the local
copies of a server database's images (renditions included)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SPECIMEN_ID_CACHE"


def cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "specimen-id")
    return Path(base)

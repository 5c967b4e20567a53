"""What a --db value names: a database directory, or a server by URL (`scheme://...`), which
goes to the backend registered for its scheme (store/__init__.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import DatabaseUnusable

DB_ENV = "SPECIMEN_ID_DB"
DEFAULT_DIR = "specimen-db"
URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")  # postgresql://..., not C:/ or a name
CONNINFO = re.compile(r"^(host|hostaddr|dbname|user|password|port|service|sslmode)=", re.IGNORECASE)


def scheme(location) -> str | None:
    """The URL scheme a location names (lower case), None for a directory."""
    found = URL_SCHEME.match(str(location).strip())
    return found.group(1).lower() if found else None


def no_backend(location) -> None:
    """Refuse a URL no backend serves, or a libpq connection string (URLs only)."""
    text = str(location).strip()
    found = URL_SCHEME.match(text)
    if found:
        raise DatabaseUnusable(f"{redacted(text)}: this specimen-id has no backend for "
                               f"{found.group(1)}:// databases; give a database directory or a postgresql:// URL")
    if CONNINFO.match(text) and all("=" in token for token in text.split()) and not Path(location).exists():
        raise DatabaseUnusable(f"{redacted(text)}: this looks like a PostgreSQL connection string; give it as a "
                               "URL (postgresql://user@host:5432/dbname), or give a database directory")


def redacted(url: str) -> str:
    """A database URL or connection string as it may be shown: every password in it as ***
    (whatever follows user: up to the last @, and any password-like parameter)."""
    url = url.strip()
    # up to the last @: a password may hold / ? # or @ (it then hides more than it must, never less)
    login = re.match(r"^([^:/?#]+://)(.*)@([^@]*)$", url, re.DOTALL)
    if login and ":" in login.group(2):
        url = f"{login.group(1)}{login.group(2).split(':', 1)[0]}:***@{login.group(3)}"
    secret = r"(?:pass|pwd|secret|token)[\w-]*"
    url = re.sub(rf"({secret}%3D)(?:(?!%20|%26|&|#).)*", r"\1***", url, flags=re.IGNORECASE)
    return re.sub(rf"({secret}\s*=\s*)('(?:[^'\\]|\\.)*'|[^&#\s]*)", r"\1***", url, flags=re.IGNORECASE)


def default_location() -> str:
    """The --db default: SPECIMEN_ID_DB as given (a URL must keep its //), else specimen-db."""
    return os.environ.get(DB_ENV) or DEFAULT_DIR

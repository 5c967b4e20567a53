"""The audit trail: one append-only row per change, written inside the transaction of the change
itself, so a change and its record commit (or vanish) together. A mixin of Database; every
store method that changes something calls `_audit`, which is why CLI, web and Python API are
all covered by one code path. SQLite triggers refuse UPDATE and DELETE on the table."""

from __future__ import annotations

import contextvars
import getpass
import json
import os
import socket

from .settings import now

USER_ENV = "SPECIMEN_ID_USER"
STATION_ENV = "SPECIMEN_ID_STATION"

# The web app sets this per request (the client's address); the CLI and the Python API leave it
# unset. A context variable, so concurrent requests in one server never see each other's.
CLIENT = contextvars.ContextVar("specimen_id_client", default=None)


def current_user() -> str:
    """$SPECIMEN_ID_USER, else the OS account running this process."""
    user = os.environ.get(USER_ENV, "").strip()
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers): still say something true
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


# `--station` of the command running now (reset as it ends, so it never outlives it)
STATION = contextvars.ContextVar("specimen_id_station", default=None)


def current_station() -> str:
    """This microscope station's name (`--station`, else $SPECIMEN_ID_STATION: one name per
    station sharing a database), else the host name."""
    return (STATION.get() or os.environ.get(STATION_ENV, "")).strip() or socket.gethostname()


class Audit:
    """Needs `self.db` (a connection with sqlite-utils' calls, holding the `audit` table)."""

    def _audit(self, action: str, specimen: dict | None = None, capture_uuid: str | None = None,
               before=None, after=None, **facts) -> None:
        """Record one change; call inside the transaction that makes it."""
        assert self.db.conn.in_transaction, "audit rows are written with the change they record"
        changes = {k: v for k, v in (("before", before), ("after", after)) if v is not None}
        self.db["audit"].insert({
            "at": now(), "user": current_user(), "station": current_station(),
            "client": CLIENT.get(), "action": action,
            "specimen_uuid": specimen["uuid"] if specimen else None,
            "specimen_name": specimen["name"] if specimen else None,
            "capture_uuid": capture_uuid, "changes": json.dumps({**changes, **facts})})

    def audit_trail(self, specimen: str | None = None, limit: int | None = None) -> list[dict]:
        """Audit rows, newest first; with `specimen`, those of the specimen called that now
        (removed ones included) or called that when the change was made (purged ones too)."""
        where, params = "", []
        if specimen is not None:
            uuids = [r[0] for r in self.db.execute("SELECT uuid FROM specimens WHERE name = ?", [specimen])]
            marks = ",".join("?" * len(uuids))
            # a move is recorded on the specimen it went to, and shown on the one it left too
            where = (f"WHERE specimen_name = ? OR specimen_uuid IN ({marks}) OR (action = 'move' AND "
                     f"json_extract(changes, '$.before.specimen') IN ({marks}))" if uuids
                     else "WHERE specimen_name = ?")  # (purged: known by the name it had; `IN ()` is not SQL)
            params = [specimen, *uuids, *uuids]
        if limit is not None:
            where, params = f"{where} ORDER BY id DESC LIMIT ?", [*params, limit]
        else:
            where = f"{where} ORDER BY id DESC"
        rows = self.db.query(f"SELECT * FROM audit {where}", params)
        return [{**r, "changes": json.loads(r["changes"])} for r in rows]

"""Units of work, as every backend runs them: the write lock that serialises writers across
processes (and stations), one transaction (or a savepoint, nested) for each change, and what
follows its commit or its rollback. A mixin of the backends, which hold its state (db,
vectors, _writers, _pending, _writes_allowed) and give it three things: `where` (the store, as
it may be shown), `_write_lock()` (acquire(timeout) raising TimeoutError, release()) and
`_begin()` (a write transaction). The directory's authorizer, which refuses a write outside a
unit of work, is here too."""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager

from ..errors import DatabaseLocked

LOCK_TIMEOUT_ENV = "SPECIMEN_ID_LOCK_TIMEOUT"


WRITES = {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE, sqlite3.SQLITE_CREATE_TABLE,
           sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_TRIGGER, sqlite3.SQLITE_CREATE_VIEW,
           sqlite3.SQLITE_DROP_TABLE, sqlite3.SQLITE_DROP_INDEX, sqlite3.SQLITE_DROP_TRIGGER,
           sqlite3.SQLITE_DROP_VIEW, sqlite3.SQLITE_ALTER_TABLE}


def authorizer(database):
    """SQLite's authorizer for a connection: it asks the store (through a weak reference, so
    that the connection closes as soon as the store goes) before it prepares each statement."""
    def authorize(action, table, *_):
        db = database()
        return db._authorize(action, table) if db is not None else sqlite3.SQLITE_OK
    return authorize


def lock_timeout() -> float:
    return float(os.environ.get(LOCK_TIMEOUT_ENV, 60))


class Transactions:
    @contextmanager
    def writing(self):
        """The database's write lock (re-entrant in one process), held across the SQLite
        transactions of one operation (an enrolment holds it across its batches); as the
        outermost one ends, the index file is written for what was committed."""
        timeout = lock_timeout()
        try:
            self._write_lock().acquire(timeout=timeout)
        except TimeoutError:  # (filelock's Timeout is one)
            raise DatabaseLocked(f"{self.where} is being written by another process; waited "
                                 f"{timeout:g} s (set {LOCK_TIMEOUT_ENV} to wait longer)") from None
        self._writers += 1
        try:
            yield self
            if self._writers == 1 and self.vectors.unsynced:
                self.vectors.sync()
        finally:
            self._writers -= 1
            self._lock.release()

    def after_commit(self, action) -> None:
        """Run `action` once the open transaction commits (at once outside one); dropped if
        it rolls back. What is loaded in memory follows the database only once it is true."""
        if self.db.conn.in_transaction and self._writes_allowed:
            self._pending.append((action, None))
        else:
            action()

    def after_rollback(self, action) -> None:
        """Run `action` if the open transaction (or the savepoint open now) rolls back: what
        was written outside SQLite for it (a new image file) is undone with it."""
        if self.db.conn.in_transaction and self._writes_allowed:
            self._pending.append((None, action))

    def _undo(self, pending: list) -> None:
        for _, action in reversed(pending):
            if action is not None:
                try:
                    action()
                except Exception:  # never in place of the error that rolled it back
                    pass  # a file left over: verify names it, repair removes it

    @contextmanager
    def unit_of_work(self, append_only: bool = False):
        """Every change to what is stored happens inside one: the write lock first (a writer in
        another process waits its turn), then one SQLite transaction. What a change depends on
        (the name is free, the specimen exists and is not removed) is read inside it, so no
        other writer can change it between the check and the write. Re-entrant.

        append_only: a logged query, which must never wait for an enrolment, takes only
        SQLite's (brief) write lock; it adds a row and changes nothing another writer checks."""
        if append_only:
            with self._transaction():
                yield self
            return
        with self.writing(), self._transaction():
            yield self

    @contextmanager
    def _transaction(self):
        """A write transaction (the backend's `_begin`); nested, it is a savepoint."""
        conn = self.db.conn
        self._writes_allowed += 1
        try:
            if conn.in_transaction:
                queued = len(self._pending)
                try:
                    with self.db.atomic():
                        yield self
                except BaseException:  # the savepoint rolled back: so does what it queued
                    undone, self._pending[queued:] = self._pending[queued:], []
                    self._undo(undone)
                    raise
                return
            self._begin()
            try:
                with self.db.atomic():  # a savepoint inside it
                    yield self
                conn.execute("COMMIT")
            except BaseException:
                undone, self._pending = self._pending, []
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._undo(undone)
                # an index loaded inside it may hold what is now undone: read it again
                self.vectors.forget()
                raise
            committed, self._pending = self._pending, []
            for action, _ in committed:
                if action is not None:
                    action()
        finally:
            self._writes_allowed -= 1

"""A psycopg connection with the few sqlite-utils calls the shared catalog code makes (execute,
query, executemany, a table's insert / insert_all / count, atomic), so that one body of SQL
serves both backends. The statements are written for SQLite; two differences are bridged here:
`?` parameters become psycopg's `%s`, and SQLite's json_object is json_build_object. (instr and
json_extract are SQL functions of the schema.) Errors of the server or the connection become
one line that names the database without its password."""

from __future__ import annotations

import re
from contextlib import contextmanager
from functools import lru_cache

from ...errors import DatabaseUnusable, StorageFailed

# tables whose rows get their id from an identity column: insert() says which (last_pk)
IDENTITY = {"specimens", "captures", "queries", "reviews", "audit"}


@lru_cache(maxsize=1024)
def translated(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s").replace("json_object(", "json_build_object(")


def scrubbed(message: str, secret: str | None) -> str:
    """A server's or libpq's message as it may be shown: one line, never the password."""
    text = " ".join(str(message).split())
    return text.replace(secret, "***") if secret else text


class Inserted:
    def __init__(self, last_pk):
        self.last_pk = last_pk


class Table:
    def __init__(self, connection: "Connection", name: str):
        self.connection, self.name = connection, name
        self.quoted = f'"{name}"'  # (one is `overlaps`, a keyword of PostgreSQL)

    def insert(self, record: dict) -> Inserted:
        columns = ", ".join(f'"{c}"' for c in record)
        returning = " RETURNING id" if self.name in IDENTITY else ""
        cursor = self.connection.execute(
            f"INSERT INTO {self.quoted} ({columns}) VALUES ({', '.join('?' * len(record))}){returning}",
            list(record.values()))
        return Inserted(cursor.fetchone()[0] if returning else None)

    def insert_all(self, records) -> None:
        rows = list(records)
        if rows:
            columns = ", ".join(f'"{c}"' for c in rows[0])
            self.connection.executemany(
                f"INSERT INTO {self.quoted} ({columns}) VALUES ({', '.join('?' * len(rows[0]))})",
                [list(r.values()) for r in rows])

    @property
    def count(self) -> int:
        return self.connection.execute(f"SELECT COUNT(*) FROM {self.quoted}").fetchone()[0]


class Connection:
    def __init__(self, pg, where: str, secret: str | None):
        self.pg, self.where, self.secret = pg, where, secret
        self.conn = self  # sqlite-utils code reaches its connection as db.conn
        self._savepoints = 0

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self.pg.info.transaction_status != TransactionStatus.IDLE

    def execute(self, sql: str, params=()):
        cursor = self.pg.cursor()
        with self.failures():
            cursor.execute(translated(sql), tuple(params))
        return cursor

    def executemany(self, sql: str, rows) -> None:
        with self.failures(), self.pg.cursor() as cursor:
            cursor.executemany(translated(sql), [tuple(r) for r in rows])

    def query(self, sql: str, params=()):
        from psycopg.rows import dict_row

        cursor = self.pg.cursor(row_factory=dict_row)
        with self.failures():
            cursor.execute(translated(sql), tuple(params))
        return iter(cursor.fetchall())

    def stream(self, sql: str, params=(), size: int = 1000):
        """(column names, rows) in batches of `size`, from a server-side cursor: a table larger
        than memory (inside a transaction, as a server-side cursor must be)."""
        with self.failures(), self.pg.cursor(name="specimen_id_stream") as cursor:
            cursor.execute(translated(sql), tuple(params))
            while rows := cursor.fetchmany(size):
                yield [c.name for c in cursor.description], rows

    def __getitem__(self, table: str) -> Table:
        return Table(self, table)

    @contextmanager
    def atomic(self):
        """Nested in a transaction: a savepoint. Outside one: a read transaction that sees one
        snapshot (REPEATABLE READ), for reads that must agree with each other."""
        if not self.in_transaction:
            self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            try:
                yield self
            except BaseException:
                self._end("ROLLBACK")
                raise
            self.execute("COMMIT")
            return
        self._savepoints += 1
        name = f"specimen_id_{self._savepoints}"
        try:
            self.execute(f"SAVEPOINT {name}")
            try:
                yield self
            except BaseException:
                self._end(f"ROLLBACK TO SAVEPOINT {name}")
                raise
            self.execute(f"RELEASE SAVEPOINT {name}")
        finally:
            self._savepoints -= 1

    def _end(self, sql: str) -> None:
        """Roll back after an error; a connection that is gone has rolled back by itself."""
        import psycopg

        try:
            if self.in_transaction:
                self.pg.execute(sql)
        except psycopg.Error:
            pass

    @contextmanager
    def failures(self):
        """Every error of the server or the connection as one line (for the CLI and the web app
        alike): the connection lost, the server's disk full, a row another station changed
        meanwhile (a foreign key), a statement the server refused."""
        import psycopg
        from psycopg import errors

        try:
            yield
        except errors.DiskFull as e:
            failed = StorageFailed(f"{self.where}: the database server's disk is full ({scrubbed(e, self.secret)});"
                                   " what was committed before stays: free space on the server and run the command "
                                   "again")
            failed.full = True
            raise failed from None
        except psycopg.IntegrityError as e:
            raise DatabaseUnusable(f"{self.where}: another station changed what this relied on meanwhile "
                                   f"({scrubbed(e, self.secret)}); nothing of it was stored: run the command "
                                   "again") from None
        except psycopg.Error as e:
            raise DatabaseUnusable(f"{self.where}: {scrubbed(e, self.secret)}; what was committed before stays: "
                                   "check the server and the URL, then run the command again") from None


def conninfo_secret(url: str) -> str | None:
    """The password a URL or connection string carries, to keep it out of messages."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(url).get("password") or None
    except Exception:  # unparsable: libpq says so when connecting
        found = re.search(r"://[^:/@]*:([^@]*)@", url)
        return found.group(1) if found else None

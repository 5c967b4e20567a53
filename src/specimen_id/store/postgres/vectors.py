"""Vectors in pgvector: the PostgreSQL backend's VectorIndex. The embeddings table holds each
vector at full precision (the source of truth, and the exact score of every hit); the index the
setting `index` names is built over it:

    auto, hnsw  HNSW (pgvector) over the vectors: kept up to date as vectors are added
    compact     HNSW over the vectors as halfvec: half the index's size; scores stay exact
    ivf         IVFFlat, trained on the vectors when it is built (exact below MIN_TRAINED)
    flat        no index: an exact scan

HNSW indexes `vector` up to 2,000 dimensions; beyond that (resnet50's 2048) the index is over
halfvec whatever the kind. Hits are re-scored by the full vectors, so the index only chooses
candidates. The index is partial: the vectors searched (the database's model, not `hidden`: a
removed specimen's vectors are kept, marked), so it never holds what a query skips, and
another model's vectors (a reindex under way) never reach it. It is built CONCURRENTLY beside
the one in use and then put in its place: stations keep querying meanwhile."""

from __future__ import annotations

import re

import numpy as np

from ..records import Hit
from ..vectors import DEFAULT_KIND, MIN_TRAINED

INDEX = "embeddings_ann"
VECTOR_MAX_DIM = 2000  # pgvector: the most dimensions an index over `vector` takes
EF_SEARCH_MAX = 1000


def index_for(kind: str, dim: int, count: int) -> tuple[str, str] | None:
    """(access method, vector type) of the index for a kind of the setting, None for none."""
    half = "halfvec" if kind == "compact" or dim > VECTOR_MAX_DIM else "vector"
    if kind == "flat" or (kind == "ivf" and count < MIN_TRAINED):
        return None
    return ("ivfflat" if kind == "ivf" else "hnsw", half)


# embeddings whose `hidden` disagrees with their specimen's removal, and the statement that
# makes them agree (import, reindex and repair derive it again)
MISHIDDEN = ("SELECT e.capture_id, e.hidden FROM embeddings e JOIN captures c ON c.id = e.capture_id "
             "JOIN specimens s ON s.id = c.specimen_id WHERE e.hidden <> (s.removed_at IS NOT NULL)")
FIX_HIDDEN = ("UPDATE embeddings e SET hidden = (s.removed_at IS NOT NULL) FROM captures c JOIN specimens s "
              "ON s.id = c.specimen_id WHERE c.id = e.capture_id AND e.hidden <> (s.removed_at IS NOT NULL)")


def _literal(text: str) -> str:
    """A model id as an SQL literal: the partial index names it, and so must the query that
    uses it (a parameter would not let the planner prove the index applies). A Unicode-escaped
    literal, so that no `?` in it is taken for a parameter."""
    escaped = str(text).replace("\\", "\\\\").replace("'", "''").replace("?", "\\003F")
    return f"U&'{escaped}'"


def as_array(vector) -> np.ndarray:
    """A vector as pgvector's psycopg adapter returns it, as float32 values."""
    return np.asarray(vector.to_numpy() if hasattr(vector, "to_numpy") else vector, np.float32)


class PgVectors:
    # every writer checks the index as it lets the write lock go (one catalog query): an index
    # another station's build left missing or half made is rebuilt by the next writer
    unsynced = True

    def __init__(self, store):
        self._store = store

    # -- the VectorIndex protocol ---------------------------------------------------------

    def add(self, ids, vectors: np.ndarray, model_id: str) -> None:
        """Store these captures' vectors (replacing any they had), searched once the unit of
        work commits; those of a removed specimen hidden."""
        store, ids = self._store, [int(i) for i in ids]
        if not ids:
            return
        vectors = np.asarray(vectors, np.float32).reshape(len(ids), -1)
        with store.unit_of_work():
            store.db.execute("DELETE FROM embeddings WHERE capture_id = ANY(?)", [ids])
            hidden = {r[0] for r in store.db.execute(
                "SELECT c.id FROM captures c JOIN specimens s ON s.id = c.specimen_id "
                "WHERE s.removed_at IS NOT NULL AND c.id = ANY(?)", [ids])}
            store.db.executemany("INSERT INTO embeddings (capture_id, model_id, vector, hidden) VALUES (?, ?, ?, ?)",
                                 [(i, model_id, v, i in hidden) for i, v in zip(ids, vectors)])
            self.bump(model_id, vectors.shape[1])

    def remove(self, ids) -> None:
        store = self._store
        with store.unit_of_work():
            store.db.execute("DELETE FROM embeddings WHERE capture_id = ANY(?)", [[int(i) for i in ids]])
            self.bump(store.model_id, None)

    def search(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """The nearest searched vectors of each query vector by cosine (inner product of unit
        vectors), best first, scored by the stored vectors."""
        vectors = np.asarray(vectors, np.float32)
        statement = self._statement(k)
        if statement is None:
            return [[] for _ in vectors]
        found = []
        for vector in vectors:
            rows = self._store.db.execute(statement, [vector, vector, int(k)]).fetchall()
            rows.sort(key=lambda r: (-r[1], r[0]))
            found.append([Hit(int(i), float(s)) for i, s in rows])
        return found

    def explain(self, vector: np.ndarray, k: int) -> str:
        """How the server runs a search for this vector (EXPLAIN): which index it uses."""
        statement = self._statement(k)
        return "\n".join(r[0] for r in self._store.db.execute(
            f"EXPLAIN {statement}", [np.asarray(vector, np.float32)] * 2 + [int(k)])) if statement else ""

    def _statement(self, k: int) -> str | None:
        """The search's SQL (parameters: the vector twice, k), with the index's search effort
        set for k; None while nothing is stored."""
        store = self._store
        model_id, dim = store.model_id, store.setting("embedding_dim")
        if not model_id or not dim or k <= 0:
            return None
        index = self.current()
        if index is not None and index[2] != model_id:
            index = None  # another model's (a reindex's new index is being built): exact
        order = "vector <#> ?" if index is None else f"(vector::{index[1]}({int(dim)})) <#> ?::{index[1]}({int(dim)})"
        if index is not None:  # enough candidates for k hits: the list pgvector keeps
            store.db.execute(f"SET {'ivfflat.probes' if index[0] == 'ivfflat' else 'hnsw.ef_search'} = "
                             f"{self._effort(index[0], k)}")
        return (f"SELECT capture_id, -(vector <#> ?) FROM embeddings WHERE model_id = {_literal(model_id)} "
                f"AND NOT hidden ORDER BY {order} LIMIT ?")

    def vectors_of(self, ids) -> dict[int, np.ndarray]:
        store = self._store
        rows = store.db.execute("SELECT capture_id, vector FROM embeddings WHERE model_id = ? AND capture_id = ANY(?)",
                                [store.model_id, [int(i) for i in ids if i >= 0]]).fetchall()
        return {int(i): as_array(v) for i, v in rows}

    def sync(self, rebuild: bool = False) -> int:
        """Build the index the setting `index` names for the database's model, when the one
        there is another (or `rebuild`); returns how many vectors are searched. Outside a
        transaction (as the write lock is let go) it is built CONCURRENTLY beside the old one,
        which then gives way: queries never wait for it."""
        store = self._store
        if rebuild:  # what `hidden` derives from: the specimens removed (repair)
            with store.unit_of_work():
                store.db.execute(FIX_HIDDEN)
        count = self.searched()
        wanted = self.planned(count)
        if rebuild or not self.in_place(wanted):
            self._build(wanted, count)
        return count

    # -- for the rest of the backend --------------------------------------------------------

    def rows(self):
        """(capture id, model id, vector) of every stored vector (verify)."""
        for cid, model_id, vector in self._store.db.execute("SELECT capture_id, model_id, vector FROM embeddings"):
            yield cid, model_id, as_array(vector)

    def warm(self) -> None:
        """Nothing to load: the server holds the index."""

    def searchable(self, ids, shown: bool) -> None:
        """Inside the unit of work that removes (or restores) their specimen."""
        self._store.db.execute("UPDATE embeddings SET hidden = ? WHERE capture_id = ANY(?)",
                               [not shown, [int(i) for i in ids]])

    def replace_all(self, ids, vectors: np.ndarray, model_id: str) -> None:
        """Inside a unit of work: every stored vector gives way to these (reindex). The old
        model's index does not take them (it is partial); sync builds the new one."""
        store = self._store
        store.db.execute("DELETE FROM embeddings")
        vectors = np.asarray(vectors, np.float32)
        store.db.executemany("INSERT INTO embeddings (capture_id, model_id, vector) VALUES (?, ?, ?)",
                             [(int(i), model_id, v) for i, v in zip(ids, vectors)])
        store.db.execute(FIX_HIDDEN)
        self.bump(model_id, vectors.shape[1] if len(vectors) else None)

    def bump(self, model_id, dim) -> int:
        """Inside a write transaction: the vectors changed (the generation counts changes)."""
        return self._store._vectors_changed(model_id, dim)

    def forget(self) -> None:
        """Nothing is loaded in this process: the server holds the index."""

    def planned(self, count: int | None = None) -> tuple[str, str] | None:
        """The index the setting `index` asks for now."""
        dim = self._store.setting("embedding_dim")
        count = self.searched() if count is None else count
        return index_for(self._store.setting("index", DEFAULT_KIND), int(dim), count) if dim else None

    def searched(self) -> int:
        """How many vectors a search takes (the database's model, not hidden)."""
        return self._store.db.execute("SELECT COUNT(*) FROM embeddings WHERE model_id = ? AND NOT hidden",
                                      [self._store.model_id]).fetchone()[0]

    def describe(self) -> str | None:
        index = self.current()
        return "flat (exact scan)" if index is None else f"{index[0]} over {index[1]} (pgvector)"

    def in_place(self, wanted: tuple[str, str] | None = None) -> bool:
        """Whether the index there is the one the setting asks for, for the database's model."""
        wanted = self.planned() if wanted is None else wanted
        current = self.current()
        if wanted is None:
            return current is None
        return current is not None and current[:2] == wanted and current[2] == self._store.model_id

    def current(self) -> tuple[str, str, str] | None:
        """(access method, vector type, model id) of the index in use, None for none."""
        row = self._store.db.execute(
            "SELECT am.amname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_am am ON am.oid = c.relam WHERE c.relname = ? AND i.indisvalid AND c.relnamespace = "
            "(SELECT relnamespace FROM pg_class WHERE oid = 'embeddings'::regclass)", [INDEX]).fetchone()
        if row is None:
            return None
        model = re.search(r"model_id = '((?:[^']|'')*)'", row[1])
        return (row[0], "halfvec" if "halfvec" in row[1] else "vector",
                model.group(1).replace("''", "'") if model else None)

    def _build(self, wanted: tuple[str, str] | None, count: int) -> None:
        """Build `wanted` (over `count` vectors) beside the index in use, then put it in its place."""
        store, db = self._store, self._store.db
        if db.in_transaction:  # (where it would block every station's searches until the commit)
            raise RuntimeError("the vector index is built outside a transaction (CONCURRENTLY)")
        with store.writable():
            db.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}_next")  # a build that was cut short
            if wanted is not None:
                method, kind = wanted
                dim = int(store.setting("embedding_dim"))
                options = f" WITH (lists = {max(1, int(count ** 0.5))})" if method == "ivfflat" else ""
                db.execute(f"CREATE INDEX CONCURRENTLY {INDEX}_next ON embeddings USING {method} "
                           f"((vector::{kind}({dim})) {kind}_ip_ops){options} "
                           f"WHERE model_id = {_literal(store.model_id)} AND NOT hidden")
            db.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
            if wanted is not None:
                db.execute(f"ALTER INDEX {INDEX}_next RENAME TO {INDEX}")

    @staticmethod
    def _effort(method: str, k: int) -> int:
        if method == "ivfflat":
            return 10  # lists probed; the iterative scan probes more when too few remain
        return min(EF_SEARCH_MAX, max(40, 2 * k))

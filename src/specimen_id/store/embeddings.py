"""The embeddings and the FAISS index derived from them. SQLite holds the vectors (the source
of truth); the index file is rebuilt from them whenever its generation disagrees (see
vectors.py). `DirectoryVectors` is the directory backend's VectorIndex; `Reembedding` is the
part of Database that swaps vectors and local features wholesale (reindex, repair)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .records import Hit
from .settings import chunks, marks
from .vectors import DEFAULT_KIND, FaissIndex, chosen_kind, rerank


class SharedIndex:
    """The loaded FAISS index of one database, shared by the stores a process opens on it (one
    per thread in the identification service): read once, and again only when the generation
    changes. Its lock keeps searches off an index a writer is changing in place, and lets one
    thread load or rebuild it while the others wait for that one."""

    def __init__(self):
        self.index: FaissIndex | None = None
        self.lock = threading.RLock()


class DirectoryVectors:
    """Vectors kept in SQLite's embeddings table and searched through index.faiss. Changes
    are made inside the store's unit of work; the loaded index follows once it commits, and
    the file is written (`sync`) when the store's write lock is let go."""

    def __init__(self, store, shared: SharedIndex):
        self._store = store
        self._shared = shared
        self.unsynced = False  # the generation moved in this process since the file was written

    @property
    def path(self) -> Path:
        return self._store.root / "index.faiss"

    # -- the VectorIndex protocol ---------------------------------------------------------

    def add(self, ids, vectors: np.ndarray, model_id: str) -> None:
        """Store these captures' vectors (replacing any they had), searchable once the unit
        of work commits."""
        store, ids = self._store, [int(i) for i in ids]
        if not ids:
            return
        vectors = np.asarray(vectors, np.float32).reshape(len(ids), -1)
        index = self.loaded()
        with store.unit_of_work():
            replaced = self._delete_rows(ids)
            store.db["embeddings"].insert_all({"capture_id": i, "model_id": model_id, "vector": v.tobytes()}
                                              for i, v in zip(ids, vectors))
            generation = self.bump(model_id, vectors.shape[1])
            searched = self._active(ids)  # a removed specimen's vectors are kept, not searched
            kept = [n for n, i in enumerate(ids) if i in searched]

            def change(index):  # (an HNSW index cannot remove: it is then rebuilt)
                return (not replaced or index.remove(ids) is not False) and index.add(
                    [ids[n] for n in kept], vectors[kept])

            store.after_commit(lambda: self.advance(index, generation, model_id, change))

    def remove(self, ids) -> None:
        """Forget these captures' vectors (purge)."""
        store, ids = self._store, [int(i) for i in ids]
        index = self.loaded()
        with store.unit_of_work():
            self._delete_rows(ids)
            generation = self.bump(store.model_id, None)
            store.after_commit(lambda: self.advance(index, generation, store.model_id,
                                                    lambda index: index.remove(ids)))

    def search(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """The nearest stored vectors of each query vector, best first (fewer than k where
        fewer are stored)."""
        vectors = np.asarray(vectors, np.float32)
        with self._shared.lock:
            index = self.loaded()
            if index is None or not len(index):
                return [[] for _ in vectors]
            scores, ids = index.search(vectors, index.candidates(k))
        if not index.exact_scores:  # the compact index estimates; the stored vectors know
            def stored(found):
                by_id = self._rows(found, index.model_id, index.dim)
                return np.array(list(by_id), np.int64), np.array(list(by_id.values())).reshape(-1, index.dim)

            scores, ids = rerank(vectors, ids, k, stored)
        return [[Hit(int(i), float(s)) for s, i in zip(row_scores, row_ids) if i >= 0]
                for row_scores, row_ids in zip(scores, ids)]

    def vectors_of(self, ids) -> dict[int, np.ndarray]:
        """capture id -> its stored vector of the database's model."""
        dim = self._store.setting("embedding_dim")
        return self._rows(ids, self._store.model_id, int(dim)) if dim else {}

    def sync(self, rebuild: bool = False) -> int:
        """Write the index file for what is stored now (call under the write lock), and say
        how many vectors it holds; an index that has grown past its kind (vectors.chosen_kind)
        is rebuilt here, by the writer, never by a reader; `rebuild` builds it from the stored
        vectors whatever the file says."""
        if rebuild:
            index = self._shared.index = self._rebuild() if self._store.model_id else None
            if index is not None:
                index.save(self.path)
        else:
            index = self.loaded()
            if index is not None and index.kind != chosen_kind(self._store.setting("index", DEFAULT_KIND),
                                                               len(index)):
                index = self._shared.index = self._rebuild()
            if index is not None:
                index.save(self.path)
        self.unsynced = False
        return len(index) if index is not None else 0

    # -- for the rest of the directory backend ---------------------------------------------

    def loaded(self) -> FaissIndex | None:
        """The FAISS index matching the database now: the one loaded, the saved file if its
        generation and model agree with SQLite, else rebuilt from the stored embeddings (and
        saved when no other process holds the write lock). None while nothing is enrolled."""
        store = self._store
        with self._shared.lock:
            generation, model_id = store.generation, store.model_id
            if self._shared.index is not None and self._shared.index.describes(generation, model_id):
                return self._shared.index
            if not model_id:
                return None
            index = FaissIndex.load(self.path)
            if index is None or not index.describes(generation, model_id):
                index = self._rebuild()
            self._shared.index = index
            return index

    def stored(self, model_id: str, dim: int):
        """(ids, vectors) of every capture embedded with this model, removed specimens left out
        (the one source the index is built from, so index and database agree): (n,), (n, dim)."""
        rows = self._store.db.execute(
            "SELECT e.capture_id, e.vector FROM embeddings e JOIN captures c ON c.id = e.capture_id "
            "JOIN specimens s ON s.id = c.specimen_id WHERE e.model_id = ? AND s.removed_at IS NULL "
            "ORDER BY e.capture_id", [model_id]).fetchall()
        ids = np.array([r[0] for r in rows], np.int64)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), np.float32)
        return ids, vectors.reshape(len(rows), dim)

    def bump(self, model_id, dim) -> int:
        """Inside a write transaction: the embedding set changed, so every index file made
        before is stale."""
        self.unsynced = True
        return self._store._vectors_changed(model_id, dim)

    def advance(self, index: FaissIndex | None, generation: int, model_id: str, change) -> None:
        """After a commit that moved the generation by one: bring the loaded index along in
        place with `change(index)` (False: it cannot), else drop it, to be read or rebuilt
        when next needed."""
        with self._shared.lock:
            current = self._shared.index
            if current is not None and current.describes(generation, model_id):
                return  # a reader has loaded the new index meanwhile (from SQLite): keep it
            if index is not None and index is current and index.describes(generation - 1, model_id) \
                    and change(index) is not False:
                index.generation = generation
            else:
                self._shared.index = None

    def rows(self):
        """(capture id, model id, vector) of every stored vector (verify; a row of a length no
        float32 vector has counts its partial value as one, so that it never passes for whole)."""
        for cid, model_id, blob in self._store.db.execute("SELECT capture_id, model_id, vector FROM embeddings"):
            yield cid, model_id, np.frombuffer(blob + b"\0" * (-len(blob) % 4), np.float32)

    def warm(self) -> None:
        """Load (or rebuild) the index now, before a write transaction that will change it."""
        self.loaded()

    def searchable(self, ids, shown: bool) -> None:
        """Inside the unit of work that removes (or restores) their specimen, before its
        change: these captures' vectors leave (or rejoin) the loaded index once it commits;
        their rows stay."""
        store, ids = self._store, [int(i) for i in ids]
        index, model_id = self.loaded(), store.model_id
        generation = self.bump(model_id, None)

        def change(index):
            if not shown:
                return index.remove(ids)
            stored = self.vectors_of(ids)  # this specimen's only
            mine = sorted(stored)
            index.add(mine, np.stack([stored[i] for i in mine]) if mine else np.empty((0, index.dim)))
            return True

        store.after_commit(lambda: self.advance(index, generation, model_id, change))

    def replace_all(self, ids, vectors: np.ndarray, model_id: str) -> None:
        """Inside a unit of work: every stored vector gives way to these (reindex); the loaded
        index is read again once it commits."""
        store = self._store
        store.db.execute("DELETE FROM embeddings")
        store.db["embeddings"].insert_all({"capture_id": int(i), "model_id": model_id, "vector": v.tobytes()}
                                          for i, v in zip(ids, np.asarray(vectors, np.float32)))
        self.bump(model_id, vectors.shape[1] if len(vectors) else None)
        store.after_commit(self.forget)

    def forget(self) -> None:
        """Drop the loaded index (after a wholesale change): read or rebuilt when next needed."""
        self._shared.index = None

    def _rows(self, ids, model_id: str, dim: int) -> dict[int, np.ndarray]:
        ids = [int(i) for i in ids if i >= 0]
        rows = self._store.db.execute(
            f"SELECT capture_id, vector FROM embeddings WHERE model_id = ? AND capture_id IN "
            f"({','.join('?' * len(ids))})", [model_id, *ids]).fetchall() if ids else []
        return {cid: np.frombuffer(blob, np.float32, dim) for cid, blob in rows}

    def _active(self, ids: list[int]) -> set[int]:
        """Those of these captures whose specimen is not removed."""
        return {r[0] for chunk in chunks(ids) for r in self._store.db.execute(
            f"SELECT c.id FROM captures c JOIN specimens s ON s.id = c.specimen_id "
            f"WHERE s.removed_at IS NULL AND c.id IN ({marks(chunk)})", chunk)}

    def _delete_rows(self, ids: list[int]) -> int:
        """Delete these captures' stored vectors; how many there were."""
        return sum(self._store.db.execute(f"DELETE FROM embeddings WHERE capture_id IN ({marks(chunk)})",
                                          chunk).rowcount for chunk in chunks(ids))

    def _rebuild(self) -> FaissIndex:
        store = self._store
        with store.db.atomic():  # one snapshot: the generation and the vectors it counts
            generation, model_id = store.generation, store.model_id
            dim = int(store.setting("embedding_dim", 1))
            ids, vectors = self.stored(model_id, dim)
        index = FaissIndex.build(ids, vectors, generation, model_id, dim, store.setting("index", DEFAULT_KIND))
        from filelock import Timeout

        if store.db.conn.in_transaction:
            return index  # it may count what is not committed yet: the writer saves it after
        try:
            with store._write_lock().acquire(timeout=0):
                if store.generation == generation:
                    index.save(self.path)
        except Timeout:
            pass  # another process is writing; it saves its own index when done
        return index


class Reembedding:
    """Vectors and local features swapped wholesale: a mixin of Database."""

    def replace_embeddings(self, model_id: str, ids, vectors: np.ndarray, features: list[bytes],
                           feature_version: str, model_name: str, weights: Path | None) -> None:
        """Switch the database to new embeddings, local features and the model that made
        them, in one transaction."""
        with self.unit_of_work():
            self._audit("reindex", before={"model_id": self.model_id},
                        after={"model_id": model_id, "model": model_name, "captures": len(ids)})
            self._put_model(model_name, weights)
            self.db.execute("DELETE FROM local_features")
            self.vectors.replace_all(ids, vectors, model_id)
            self._put_features(ids, features, feature_version)

    def replace_features(self, ids, features: list[bytes], feature_version: str) -> None:
        """Put recomputed local features of every capture in place, in one transaction; the
        vectors and the index stay as they are."""
        with self.unit_of_work():
            self._audit("reindex", before={"features_version": self.setting("features_version")},
                        after={"features_version": feature_version, "captures": len(ids)})
            self.db.execute("DELETE FROM local_features")
            self._put_features(ids, features, feature_version)

    def restore_vectors(self, model_id: str, ids, vectors: np.ndarray, features: list[bytes],
                        feature_version: str) -> None:
        """Put recomputed embeddings and local features of some captures in place of whatever
        they had, and drop embeddings of any other model, in one transaction (repair)."""
        ids = [int(i) for i in ids]
        with self.unit_of_work():
            for chunk in chunks(ids):
                self.db.execute(f"DELETE FROM local_features WHERE capture_id IN ({marks(chunk)})", chunk)
            self.db.execute("DELETE FROM embeddings WHERE model_id != ?", [model_id])
            self.vectors.add(ids, vectors, model_id)
            self._put_features(ids, features, feature_version)
            self.after_commit(self.vectors.forget)

    def _put_features(self, ids, features: list[bytes], feature_version: str) -> None:
        self.db["local_features"].insert_all(
            {"capture_id": int(i), "version": feature_version, "data": blob} for i, blob in zip(ids, features))
        self._put_setting("features_version", feature_version)

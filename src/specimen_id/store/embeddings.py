"""The embeddings and the FAISS index derived from them: a mixin of Database. SQLite holds the
vectors; the index is rebuilt from them whenever its generation disagrees (see vectors.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .vectors import DEFAULT_KIND, VectorIndex, chosen_kind, rerank


class SharedIndex:
    """The loaded FAISS index of one database, shared by the Database objects a process opens
    on it (one per thread in the identification service): read once, and again only when the
    generation changes. Its lock keeps searches off an index a writer is changing in place, and
    lets one thread load or rebuild it while the others wait for that one."""

    def __init__(self):
        self.index: VectorIndex | None = None
        self.lock = threading.RLock()


class Embeddings:
    _shared: SharedIndex

    @property
    def _index(self) -> VectorIndex | None:
        return self._shared.index

    @_index.setter
    def _index(self, index: VectorIndex | None) -> None:
        self._shared.index = index

    def _advance_index(self, index: VectorIndex | None, generation: int, model_id: str, change) -> None:
        """After a write that moved the generation by one: bring the loaded index along in
        place with `change(index)` (False: it cannot), else drop it, to be read or rebuilt
        when next needed."""
        with self._shared.lock:
            if self._index is not None and self._index.describes(generation, model_id):
                return  # a reader has loaded the new index meanwhile (from SQLite): keep it
            if index is not None and index is self._index and index.describes(generation - 1, model_id) \
                    and change(index) is not False:
                index.generation = generation
            else:
                self._index = None

    def _bump_generation(self, model_id, dim) -> int:
        """Inside a write transaction: the embedding set changed, so every index file made
        before is stale."""
        generation = self.generation + 1
        self._put_setting("index_generation", generation)
        if model_id:
            self._put_setting("model_id", model_id)
        if dim:
            self._put_setting("embedding_dim", int(dim))
        return generation

    def embeddings(self, model_id: str, dim: int):
        """(ids, vectors) of every capture embedded with this model, removed specimens left out
        (the one source the index is built from, so index and database agree): (n,), (n, dim)."""
        rows = self.db.execute(
            "SELECT e.capture_id, e.vector FROM embeddings e JOIN captures c ON c.id = e.capture_id "
            "JOIN specimens s ON s.id = c.specimen_id WHERE e.model_id = ? AND s.removed_at IS NULL "
            "ORDER BY e.capture_id", [model_id]).fetchall()
        ids = np.array([r[0] for r in rows], np.int64)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), np.float32)
        return ids, vectors.reshape(len(rows), dim)

    def replace_embeddings(self, model_id: str, ids, vectors: np.ndarray, features: list[bytes],
                           feature_version: str, model_name: str, weights: Path | None) -> None:
        """Switch the database to new embeddings, local features and the model that made
        them, in one transaction."""
        with self.unit_of_work():
            self._audit("reindex", before={"model_id": self.model_id},
                        after={"model_id": model_id, "model": model_name, "captures": len(ids)})
            self._put_model(model_name, weights)
            self.db.execute("DELETE FROM embeddings")
            self.db.execute("DELETE FROM local_features")
            self.db["embeddings"].insert_all(
                {"capture_id": int(i), "model_id": model_id, "vector": v.tobytes()}
                for i, v in zip(ids, np.asarray(vectors, np.float32)))
            self.db["local_features"].insert_all(
                {"capture_id": int(i), "version": feature_version, "data": blob}
                for i, blob in zip(ids, features))
            self._put_setting("features_version", feature_version)
            self._bump_generation(model_id, vectors.shape[1] if len(vectors) else None)
        self._index = None

    def replace_features(self, ids, features: list[bytes], feature_version: str) -> None:
        """Put recomputed local features of every capture in place, in one transaction; the
        vectors and the index stay as they are."""
        with self.unit_of_work():
            self._audit("reindex", before={"features_version": self.setting("features_version")},
                        after={"features_version": feature_version, "captures": len(ids)})
            self.db.execute("DELETE FROM local_features")
            self.db["local_features"].insert_all(
                {"capture_id": int(i), "version": feature_version, "data": blob}
                for i, blob in zip(ids, features))
            self._put_setting("features_version", feature_version)

    def restore_vectors(self, model_id: str, ids, vectors: np.ndarray, features: list[bytes],
                        feature_version: str) -> None:
        """Put recomputed embeddings and local features of some captures in place of whatever
        they had, and drop embeddings of any other model, in one transaction (repair; call
        under `writing()`)."""
        marks = ",".join("?" * len(ids))
        ids = [int(i) for i in ids]
        with self.unit_of_work():
            self.db.execute(f"DELETE FROM embeddings WHERE capture_id IN ({marks})", ids)
            self.db.execute(f"DELETE FROM local_features WHERE capture_id IN ({marks})", ids)
            self.db.execute("DELETE FROM embeddings WHERE model_id != ?", [model_id])
            self.db["embeddings"].insert_all(
                {"capture_id": i, "model_id": model_id, "vector": v.tobytes()}
                for i, v in zip(ids, np.asarray(vectors, np.float32)))
            self.db["local_features"].insert_all(
                {"capture_id": i, "version": feature_version, "data": blob}
                for i, blob in zip(ids, features))
            self._put_setting("features_version", feature_version)
            self._bump_generation(model_id, vectors.shape[1])
        self._index = None

    def rebuild_index(self) -> VectorIndex | None:
        """Build the index from the stored embeddings whatever the file says, and save it
        (call under `writing()`)."""
        self._index = self._rebuild_index() if self.model_id else None
        return self._index

    def index(self) -> VectorIndex | None:
        """The FAISS index matching the database now: the saved file if its generation and
        model agree with SQLite, else rebuilt from the stored embeddings (and saved when no
        other process holds the write lock). None while nothing is enrolled."""
        with self._shared.lock:
            generation, model_id = self.generation, self.model_id
            if self._index is not None and self._index.describes(generation, model_id):
                return self._index
            if not model_id:
                return None
            index = VectorIndex.load(self.index_path)
            if index is None or not index.describes(generation, model_id):
                index = self._rebuild_index()
            self._index = index
            return index

    def _rebuild_index(self) -> VectorIndex:
        with self.db.atomic():  # one snapshot: the generation and the vectors it counts
            generation, model_id = self.generation, self.model_id
            dim = int(self.setting("embedding_dim", 1))
            ids, vectors = self.embeddings(model_id, dim)
        index = VectorIndex.build(ids, vectors, generation, model_id, dim, self.setting("index", DEFAULT_KIND))
        from filelock import Timeout

        try:
            with self._write_lock().acquire(timeout=0):
                if self.generation == generation:
                    index.save(self.index_path)
        except Timeout:
            pass  # another process is writing; it saves its own index when done
        return index

    def save_index(self) -> None:
        """Write the current index file (call under `writing()`, after a change); an index
        that has grown past its kind (see vectors.chosen_kind) is rebuilt here, by the
        writer, never by a reader."""
        index = self.index()
        if index is not None and index.kind != chosen_kind(self.setting("index", DEFAULT_KIND), len(index)):
            index = self._index = self._rebuild_index()
        if index is not None:
            index.save(self.index_path)

    @property
    def index_path(self) -> Path:
        return self.root / "index.faiss"

    def search(self, vectors: np.ndarray, k: int):
        """Nearest captures for each vector: (scores, capture ids), both (n, k')."""
        with self._shared.lock:
            index = self.index()
            if index is None or not len(index):
                return np.empty((len(vectors), 0), np.float32), np.empty((len(vectors), 0), np.int64)
            scores, ids = index.search(vectors, index.candidates(k))
        if index.exact_scores:
            return scores, ids

        def stored(found):  # the compact index estimates; the stored vectors know
            by_id = self.vectors_of(found, index.model_id, index.dim)
            return np.array(list(by_id), np.int64), np.array(list(by_id.values())).reshape(-1, index.dim)

        return rerank(np.asarray(vectors, np.float32), ids, k, stored)

    def vectors_of(self, ids, model_id: str, dim: int) -> dict[int, np.ndarray]:
        ids = [int(i) for i in ids if i >= 0]
        rows = self.db.execute(
            f"SELECT capture_id, vector FROM embeddings WHERE model_id = ? AND capture_id IN "
            f"({','.join('?' * len(ids))})", [model_id, *ids]).fetchall() if ids else []
        return {cid: np.frombuffer(blob, np.float32, dim) for cid, blob in rows}

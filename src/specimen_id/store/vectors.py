"""The FAISS index: derived data, rebuilt from SQLite whenever it is missing or stale.

The file is one header line of JSON (generation, model_id, count) followed by FAISS's own
serialisation, written atomically, so the generation travels with the vectors it describes and a
stale or foreign file is detected on open instead of silently disagreeing with the database."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .files import write_atomic

MAGIC = b"specimen-id index 1\n"


class VectorIndex:
    """Inner-product search over L2-normalised vectors keyed by capture id."""

    def __init__(self, dim: int, generation: int = 0, model_id: str = ""):
        import faiss

        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.dim, self.generation, self.model_id = dim, generation, model_id

    @classmethod
    def build(cls, ids, vectors, generation: int, model_id: str, dim: int) -> "VectorIndex":
        index = cls(dim, generation, model_id)
        index.add(ids, vectors)
        return index

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def describes(self, generation: int, model_id: str) -> bool:
        """Whether this index holds exactly the database's embeddings at that generation."""
        return self.generation == generation and self.model_id == model_id

    def add(self, ids, vectors) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32),
                                    np.asarray(ids, np.int64))

    def remove(self, ids) -> None:
        if len(ids):
            self.index.remove_ids(np.asarray(ids, np.int64))

    def ids(self) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def search(self, vectors, k: int):
        """(scores, ids), each (n, k); ids are -1 where fewer than k vectors exist."""
        k = max(1, min(k, len(self))) if len(self) else 1
        return self.index.search(np.ascontiguousarray(vectors, np.float32), k)

    def save(self, path: Path) -> None:
        import faiss

        header = json.dumps({"generation": self.generation, "model_id": self.model_id,
                             "count": len(self), "dim": self.dim}).encode()
        body = faiss.serialize_index(self.index).tobytes()
        write_atomic(path, MAGIC + header + b"\n" + body)

    @classmethod
    def load(cls, path: Path) -> "VectorIndex | None":
        """The saved index, or None when the file is missing or unreadable (then: rebuild)."""
        import faiss

        try:
            data = path.read_bytes()
            if not data.startswith(MAGIC):
                return None
            header_end = data.index(b"\n", len(MAGIC))
            header = json.loads(data[len(MAGIC):header_end])
            index = faiss.deserialize_index(np.frombuffer(data, np.uint8, offset=header_end + 1))
            self = cls.__new__(cls)
            self.index = index
            self.dim, self.generation, self.model_id = header["dim"], header["generation"], header["model_id"]
            count = header["count"]
        except (OSError, ValueError, RuntimeError, KeyError, TypeError):
            return None
        return self if len(self) == count else None

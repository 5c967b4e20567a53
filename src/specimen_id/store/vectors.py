"""The FAISS index: derived data, rebuilt from SQLite whenever it is missing or stale.

The file is one header line of JSON (generation, model_id, count) followed by FAISS's own
serialisation, written atomically, so the generation travels with the vectors it describes and a
stale or foreign file is detected on open instead of silently disagreeing with the database."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import threads
from ..products import matmul
from .files import write_atomic

MAGIC = b"specimen-id index 2\n"

# Index kinds (setting `index`): "auto" is exact search below FLAT_MAX vectors and IVF from
# there: at 100k vectors a single query's flat scan is a sixth of the whole query on 2 cores,
# and the query with IVF was as right and faster (README, Speed). "ivf" finds candidates among 4-bit product codes of the PCA-reduced vectors, which
# FAISS scans with SIMD ("fast scan"), and re-ranks REFINE times the wanted number by the full
# vectors it keeps beside them: at 1M vectors (bench/speed.py) that is recall@10 0.996 in 3
# ms, where IVF lists of full vectors took 76 ms a query for 0.9998. "hnsw" is a graph index
# (rebuilt on every removal); "compact" is PCA + IVF + 8-bit scalar quantisation without the
# full vectors: 256 bytes a vector instead of 5120, re-ranked by the database.
INDEX_KINDS = ("auto", "flat", "ivf", "hnsw", "compact")
DEFAULT_KIND = "auto"
FLAT_MAX = 100_000
MIN_TRAINED = 1024  # below this, a forced ivf/compact is flat: trained lists need data, and
# exact search over so few vectors is both smaller and faster anyway
COMPACT_DIM = 256
TARGET_RECALL = 0.995  # recall@10 the search parameters are tuned to, against exact search
RERANK = 4  # compact: fetch 4x the candidates; the caller re-ranks them by the stored vectors
REFINE = 20  # ivf: re-rank 20x the candidates by the full vectors (4-bit codes rank coarsely)


def chosen_kind(kind: str, count: int) -> str:
    if kind == "auto":
        return "flat" if count < FLAT_MAX else "ivf"
    return "flat" if kind in ("ivf", "compact") and count < MIN_TRAINED else kind


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true neighbours (rows of ids) that were found."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / max(truth.size, 1)


def exact_top(queries: np.ndarray, slices, k: int = 10) -> np.ndarray:
    """Positions of each query's k best vectors by inner product, by brute force over
    (start position, vectors) slices: no second copy of a large collection is made."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best = np.zeros((len(queries), 0), np.int64)
    for start, vectors in slices:
        scores = queries @ vectors.T
        if scores.shape[1] > k:  # the slice's own k best first: sorting all of it is slow
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores = np.take_along_axis(scores, part, 1)
        else:
            part = np.arange(scores.shape[1])[None].repeat(len(queries), 0)
        scores, positions = np.hstack([best_scores, scores]), np.hstack([best, start + part])
        keep = np.argsort(-scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(scores, keep, 1)
        best = np.take_along_axis(positions, keep, 1)
    return best


def rerank(queries: np.ndarray, candidates: np.ndarray, k: int, fetch):
    """The k best candidates of each query by exact cosine. fetch(ids) gives (ids it has,
    their full vectors as rows); -1 ids and ids without a vector drop out."""
    scores = np.full((len(queries), k), -np.inf, np.float32)
    ids = np.full((len(queries), k), -1, np.int64)
    for row, (vector, found) in enumerate(zip(queries, candidates)):
        found = found[found >= 0]
        if not len(found):
            continue
        found, stored = fetch(found)
        exact = matmul(stored, vector[None], b_transposed=True)[:, 0]  # see products.py
        best = np.argsort(-exact, kind="stable")[:k]
        scores[row, :len(best)], ids[row, :len(best)] = exact[best], found[best]
    return scores, ids


class FaissIndex:
    """Inner-product search over L2-normalised vectors keyed by capture id."""

    def __init__(self, dim: int, generation: int = 0, model_id: str = "", kind: str = "flat"):
        import faiss

        self.dim, self.generation, self.model_id, self.kind = dim, generation, model_id, kind
        self.effort = 0  # nprobe (IVF kinds) or efSearch (HNSW); 0: exact, or not tuned yet
        self.exact = None  # ivf: the full vectors by id, for re-ranking
        if kind == "flat":
            self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif kind == "hnsw":
            self.index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT))
        else:
            self.index = None  # IVF kinds are trained on the vectors first (build)

    @property
    def exact_scores(self) -> bool:
        """Whether search returns exact cosines (compact returns estimates from 8-bit codes)."""
        return self.kind != "compact"

    def candidates(self, k: int) -> int:
        """How many to fetch so that re-ranking them by exact cosine yields the true top k."""
        return k if self.exact_scores else k * RERANK

    @classmethod
    def build(cls, ids, vectors, generation: int, model_id: str, dim: int,
              kind: str = "auto") -> "FaissIndex":
        vectors = np.ascontiguousarray(vectors, np.float32)
        index = cls(dim, generation, model_id, chosen_kind(kind, len(vectors)))
        if index.index is None:
            index.train(vectors, len(vectors))
        index.add(ids, vectors)
        index.tune(np.asarray(ids, np.int64), vectors)
        return index

    def train(self, vectors, n: int) -> None:
        """IVF lists for an index of n vectors: about 2*sqrt(n) of them (a power of two),
        trained on a sample of `vectors`. Unit vectors rank the same by L2 as by inner
        product, and L2 lets PCA centre the data."""
        import faiss

        nlist = int(2 ** np.clip(np.round(np.log2(2 * np.sqrt(max(n, 1)))), 4, 16))
        while nlist > 16 and n < 39 * nlist:  # k-means wants ~39 points per list
            nlist //= 2
        reduced = min(COMPACT_DIM, self.dim)
        codes = f"PQ{reduced}x4fs" if self.kind == "ivf" else "SQ8"  # 4 bits a dimension, or 8
        self.index = faiss.index_factory(self.dim, f"PCA{reduced},IVF{nlist},{codes}", faiss.METRIC_L2)
        if self.kind == "ivf":
            self.exact = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        ivf = faiss.extract_index_ivf(self.index)
        ivf.cp.max_points_per_centroid = 64  # enough for stable lists, 4x less k-means work
        sample = np.random.default_rng(0).permutation(len(vectors))[:64 * nlist]
        self.index.train(vectors[np.sort(sample)])

    def tune(self, ids: np.ndarray, vectors, queries: int = 200) -> None:
        """Set nprobe (IVF) or efSearch (HNSW) to the smallest value whose recall@10 against
        exact search (within the `candidates(10)` fetched), on a sample of the stored vectors
        as queries, reaches TARGET_RECALL."""
        if self.kind == "flat" or len(vectors) <= 10:
            return
        rng = np.random.default_rng(1)
        sample = vectors[rng.choice(len(vectors), min(queries, len(vectors)), replace=False)]
        slices = ((s, vectors[s:s + 100_000]) for s in range(0, len(vectors), 100_000))
        truth = exact_top(sample, slices)
        self.tune_on(sample, ids[truth])

    def tune_on(self, queries: np.ndarray, truth: np.ndarray) -> None:
        """The smallest search effort reaching TARGET_RECALL for these queries, given the ids
        of their exact 10 nearest neighbours."""
        for value in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
            self._set_search(value)
            found = self.search(queries, self.candidates(10))[1]
            if recall_at(found, truth) >= TARGET_RECALL:
                return

    def _set_search(self, value: int) -> None:
        import faiss

        self.effort = value
        if self.kind == "hnsw":
            faiss.downcast_index(self.index.index).hnsw.efSearch = max(value, 10)
        else:
            faiss.extract_index_ivf(self.index).nprobe = value

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def parts(self) -> list:
        """The FAISS indexes that hold every id: the search index, and the full vectors (ivf)."""
        return [index for index in (self.index, self.exact) if index is not None]

    def describes(self, generation: int, model_id: str) -> bool:
        """Whether this index holds exactly the database's embeddings at that generation."""
        return self.generation == generation and self.model_id == model_id

    def add(self, ids, vectors) -> None:
        if len(ids):
            vectors, ids = np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64)
            for index in self.parts():
                index.add_with_ids(vectors, ids)

    def remove(self, ids) -> bool:
        """Drop vectors by id; False when this kind cannot (HNSW): then rebuild it."""
        if not len(ids):
            return True
        if self.kind == "hnsw":
            return False
        for index in self.parts():
            index.remove_ids(np.asarray(ids, np.int64))
        return True

    def ids(self) -> np.ndarray:
        return np.sort(self.ids_in_order())

    def ids_in_order(self) -> np.ndarray:
        """Stored ids, in the order the vectors were added (flat/HNSW) or by IVF list."""
        import faiss

        if self.kind in ("flat", "hnsw"):
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        lists = faiss.extract_index_ivf(self.index).invlists
        return np.concatenate([np.zeros(0, np.int64)] + [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
            for i in range(lists.nlist) if lists.list_size(i)])

    def contents(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(ids, vectors) this index holds, in its own order; vectors only where it keeps them
        exactly and by position (flat, HNSW), else None."""
        import faiss

        ids = self.ids_in_order()
        if self.kind not in ("flat", "hnsw"):
            return ids, None
        inner = faiss.downcast_index(self.index.index)
        return ids, inner.reconstruct_n(0, len(ids)) if len(ids) else np.empty((0, self.dim), np.float32)

    def search(self, vectors, k: int):
        """(scores, ids), each (n, k); ids are -1 where fewer than k vectors exist."""
        k = max(1, min(k, len(self))) if len(self) else 1
        vectors = np.ascontiguousarray(vectors, np.float32)
        with threads.faiss_threads(len(vectors)):
            scores, ids = self.index.search(vectors, k * REFINE if self.exact is not None else k)
        if self.exact is not None:
            return rerank(vectors, ids, k, lambda found: (found, self.exact.reconstruct_batch(found)))
        if self.kind == "compact":  # squared L2 between unit vectors = 2 - 2 cos
            scores = 1 - scores / 2
        return scores, ids

    def save(self, path: Path) -> None:
        import faiss

        body = faiss.serialize_index(self.index).tobytes()
        exact = faiss.serialize_index(self.exact).tobytes() if self.exact is not None else b""
        header = json.dumps({"generation": self.generation, "model_id": self.model_id,
                             "count": len(self), "dim": self.dim, "kind": self.kind,
                             "effort": self.effort, "exact_bytes": len(exact)}).encode()
        write_atomic(path, MAGIC + header + b"\n" + exact + body)

    @classmethod
    def load(cls, path: Path) -> "FaissIndex | None":
        """The saved index, or None when the file is missing or unreadable (then: rebuild)."""
        import faiss

        try:
            data = path.read_bytes()
            if not data.startswith(MAGIC):
                return None
            header_end = data.index(b"\n", len(MAGIC))
            header = json.loads(data[len(MAGIC):header_end])
            start, exact = header_end + 1, header["exact_bytes"]
            self = cls.__new__(cls)
            self.exact = faiss.deserialize_index(np.frombuffer(data, np.uint8, exact, start)) if exact else None
            self.index = faiss.deserialize_index(np.frombuffer(data, np.uint8, offset=start + exact))
            self.dim, self.generation, self.model_id = header["dim"], header["generation"], header["model_id"]
            self.kind, count = header.get("kind", "flat"), header["count"]
            self.effort = 0
            if header.get("effort"):
                self._set_search(header["effort"])
        except (OSError, ValueError, RuntimeError, KeyError, TypeError):
            return None
        return self if all(part.ntotal == count for part in self.parts()) else None

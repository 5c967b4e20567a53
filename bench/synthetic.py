"""Embeddings at a scale no image collection here reaches, with the structure of real ones.

Uniform random vectors have no neighbourhoods, so recall on them means nothing. This model is
fitted to real embeddings instead: field centres follow a Gaussian with the mean and the
leading principal components of real fields' embeddings (plus an isotropic remainder with the
variance those components leave), and each capture of a field scatters around its centre the
way simulated re-captures of real fields scatter around their originals (again leading
components plus remainder). Every vector is then L2-normalised, as the embedder's are.
Generation is chunked and seeded per chunk, so 10M vectors never need to be in memory at once
and the same chunk can be made again for exact search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COMPONENTS = 256
BLOCK = 1024  # fields drawn from one seed


@dataclass
class FittedVectors:
    mean: np.ndarray  # (d,)
    between: np.ndarray  # (k, d): principal directions of field centres, scaled by their std
    between_rest: float  # std per dimension of what those k directions leave
    within: np.ndarray  # (k, d): the same for capture-to-capture differences of one field
    within_rest: float
    captures_per_field: int = 4

    @classmethod
    def fit(cls, originals: np.ndarray, recaptures: np.ndarray, of: np.ndarray) -> "FittedVectors":
        """originals (n, d) real field embeddings; recaptures (m, d) of field `of` (m,)."""
        mean = originals.mean(axis=0)
        between, between_rest = _components(originals - mean)
        within, within_rest = _components(recaptures - originals[of])
        return cls(mean, between, between_rest, within, within_rest)

    @property
    def dim(self) -> int:
        return len(self.mean)

    def centres(self, fields: np.ndarray) -> np.ndarray:
        """Centres of these field numbers. Each block of BLOCK fields has a seed of its own, so a
        field's centre is the same however the collection is cut into chunks (and a query can
        be a re-capture of a stored field); each block needed is drawn once."""
        fields = np.asarray(fields, np.int64)
        blocks = np.unique(fields // BLOCK)
        drawn = np.concatenate([self._block(int(b)) for b in blocks])
        return drawn[np.searchsorted(blocks, fields // BLOCK) * BLOCK + fields % BLOCK]

    def _block(self, block: int) -> np.ndarray:
        rng = np.random.default_rng([7, block])
        z = rng.standard_normal((BLOCK, len(self.between)), np.float32)
        rest = rng.standard_normal((BLOCK, self.dim), np.float32) * self.between_rest
        return self.mean + z @ self.between + rest

    def captures_of(self, centres: np.ndarray, seed) -> np.ndarray:
        """One capture per row of centres: centre + within-field scatter, normalised."""
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((len(centres), len(self.within)), np.float32)
        x = centres + z @ self.within + rng.standard_normal(centres.shape, np.float32) * self.within_rest
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def chunk(self, start: int, count: int) -> np.ndarray:
        """Vectors start..start+count of the collection (captures_per_field per field, in
        order); the same arguments always give the same vectors."""
        per = self.captures_per_field
        assert start % per == 0 and count % per == 0
        centres = np.repeat(self.centres(np.arange(start // per, (start + count) // per)), per, axis=0)
        return self.captures_of(centres, [11, start])

    def queries(self, total: int, count: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """Fresh re-captures of `count` random fields among the first `total` vectors'
        fields: (vectors, field numbers)."""
        rng = np.random.default_rng(seed)
        fields = np.sort(rng.choice(total // self.captures_per_field, count, replace=False))
        return self.captures_of(self.centres(fields), [13, seed]), fields


def _components(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Leading principal directions scaled by their standard deviation, and the per-dimension
    standard deviation of the remainder."""
    _, s, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    k = min(COMPONENTS, len(s))
    std = s / np.sqrt(max(len(x) - 1, 1))
    rest = float(np.sqrt(np.sum(std[k:] ** 2) / x.shape[1]))
    return (vt[:k] * std[:k, None]).astype(np.float32), rest


def exact_top10(model: FittedVectors, total: int, queries: np.ndarray, chunk: int = 250_000,
                progress=None) -> np.ndarray:
    """Positions of each query's 10 nearest vectors by inner product, by brute force over
    chunks made again from their seeds."""
    from specimen_id.store.vectors import exact_top

    def slices():
        for start in range(0, total, chunk):
            vectors = model.chunk(start, min(chunk, total - start))
            yield start, vectors
            if progress is not None:
                progress.update(len(vectors))

    return exact_top(queries, slices())

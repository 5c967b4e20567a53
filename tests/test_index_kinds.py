"""Index kinds: each finds the true nearest neighbours, survives a save and load with its tuned
search parameters, and can be chosen for a database, which then answers as before."""

import json

import numpy as np
import pytest
from conftest import QUERIES

from specimen_id.local_features import FEATURE_VERSION
from specimen_id.store import CaptureRecord, Database
from specimen_id.store.vectors import (
    COMPACT_DIM,
    FLAT_MAX,
    MIN_TRAINED,
    FaissIndex,
    chosen_kind,
    recall_at,
)


def _clustered(n: int, dim: int = 1280, seed: int = 0) -> np.ndarray:
    """Unit vectors in tight groups of four (captures of one field) around centres that span a
    128-dimensional subspace, as CNN embeddings of one kind of image do."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((128, dim)).astype(np.float32)
    centres = rng.standard_normal((n // 4, 128)).astype(np.float32) @ basis
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.repeat(centres, 4, axis=0) + 0.01 * rng.standard_normal((n // 4 * 4, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "compact"])
def test_each_kind_finds_the_exact_neighbours_and_keeps_its_tuning(kind, tmp_path):
    vectors = _clustered(4000)
    ids = np.arange(4000, dtype=np.int64) * 3 + 7  # capture ids are not positions
    index = FaissIndex.build(ids, vectors, 5, "m", 1280, kind)
    assert index.kind == kind and len(index) == 4000
    np.testing.assert_array_equal(index.ids(), np.sort(ids))
    queries = vectors[::40] + 0.05 * np.random.default_rng(9).standard_normal((100, 1280)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :10]]
    scores, found = index.search(queries, index.candidates(10))
    assert recall_at(found, truth) >= 0.98  # compact: within the candidates the caller re-ranks
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first, as cosines
    index.save(tmp_path / "index.faiss")
    loaded = FaissIndex.load(tmp_path / "index.faiss")
    assert (loaded.kind, loaded.effort) == (kind, index.effort)
    np.testing.assert_array_equal(loaded.search(queries, index.candidates(10))[1], found)
    if kind != "flat":
        assert index.effort  # tuned from the data, not left at the default
    assert index.remove(ids[:10]) == (kind != "hnsw")  # HNSW cannot remove: rebuilt instead
    if kind != "hnsw":  # gone from every part of the index, which still saves and loads whole
        assert len(index) == 3990 and not set(index.search(vectors[:10], 10)[1].ravel()) & set(ids[:10])
        index.save(tmp_path / "index.faiss")
        assert len(FaissIndex.load(tmp_path / "index.faiss")) == 3990


def test_auto_kind_is_exact_below_the_documented_size():
    assert chosen_kind("auto", FLAT_MAX - 1) == "flat"
    assert chosen_kind("auto", FLAT_MAX) == "ivf"
    assert chosen_kind("hnsw", 10) == "hnsw"
    assert chosen_kind("compact", MIN_TRAINED - 1) == "flat" == chosen_kind("ivf", 100)
    assert chosen_kind("compact", MIN_TRAINED) == "compact"


def test_compact_database_search_reranks_by_the_stored_vectors(tmp_path):
    """A database of 1200 small real PNG captures with clustered vectors: with the compact
    index, search gives the exact cosines and the same top 10 as exact search."""
    import cv2

    from specimen_id import images

    db = Database(tmp_path / "db")
    db.use_model("efficientnet_lite0", None, "m")
    vectors = _clustered(1200)
    rng = np.random.default_rng(5)
    captures = [images.decode(cv2.imencode(".png", rng.integers(0, 255, (8, 8), np.uint8))[1].tobytes(),
                              f"c{i}.png") for i in range(1200)]
    with db.writing():
        db.add_captures([CaptureRecord.of("field", c, v, b"") for c, v in zip(captures, vectors)], "m", "none")
        db.set_setting("index", "compact")
        db.vectors.sync()
    assert db.vectors.loaded().kind == "compact"
    query = vectors[17] + 0.02 * rng.standard_normal(1280).astype(np.float32)
    query /= np.linalg.norm(query)
    (hits,) = db.vectors.search(query[None], 10)
    ids_all, stored = db.vectors.stored("m", 1280)
    exact = stored @ query
    order = np.argsort(-exact)[:10]
    np.testing.assert_array_equal([h.capture_id for h in hits], ids_all[order])
    np.testing.assert_allclose([h.similarity for h in hits], exact[order], atol=1e-6)
    # verify compares the trained kinds with the database id by id
    for kind in ("compact", "ivf"):
        with db.writing():
            db.set_setting("index", kind)
            db.vectors.sync()
        assert db.vectors.loaded().kind == kind
        assert [f.message for f in db.verify(FEATURE_VERSION).findings if f.kind == "index"] == []


def test_compact_index_uses_a_fraction_of_the_memory_per_vector(tmp_path):
    """Bytes a vector costs, from the growth of the saved index (the fixed parts, such as the
    PCA matrix and the list centroids, cancel out)."""
    vectors = _clustered(16000)
    per_vector = {}
    for kind in ("flat", "compact"):
        sizes = []
        for n in (8000, 16000):
            FaissIndex.build(np.arange(n), vectors[:n], 1, "m", 1280, kind).save(tmp_path / kind)
            sizes.append((tmp_path / kind).stat().st_size)
        per_vector[kind] = (sizes[1] - sizes[0]) / 8000
    assert per_vector["flat"] >= 1280 * 4
    assert per_vector["compact"] <= COMPACT_DIM * 1.2  # one byte a dimension, plus its id
    assert per_vector["flat"] / per_vector["compact"] >= 4


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_database_with_another_index_kind_answers_the_same(enrolled, kind):
    before = [json.loads(line) for line in enrolled("query", "--json", *sorted(QUERIES.glob("*.jpg"))).output.splitlines()]
    result = enrolled("config", "index", kind)
    assert result.exit_code == 0 and f"index = {kind}" in result.output
    db = Database(enrolled.db)
    # a forced IVF needs MIN_TRAINED vectors; below that it is exact search
    assert db.vectors.loaded().kind == chosen_kind(kind, 6) and db.vectors.loaded().describes(db.generation, db.model_id)
    after = [json.loads(line) for line in enrolled("query", "--json", *sorted(QUERIES.glob("*.jpg"))).output.splitlines()]
    for b, a in zip(before, after, strict=True):
        assert (a["decision"], a["specimen"]) == (b["decision"], b["specimen"])
        # scores are exact cosines from the stored vectors, even where the index estimates
        assert a["candidates"][0]["cnn_similarity"] == pytest.approx(b["candidates"][0]["cnn_similarity"], abs=1e-5)
    assert enrolled("remove", "he-tissue-a").exit_code == 0  # HNSW rebuilds instead
    db = Database(enrolled.db)
    ids, _ = db.vectors.stored(db.model_id, db.vectors.loaded().dim)
    assert db.vectors.loaded().describes(db.generation, db.model_id)
    np.testing.assert_array_equal(db.vectors.loaded().ids(), np.sort(ids))


def test_unknown_index_kind_is_refused(enrolled):
    result = enrolled("config", "index", "btree")
    assert result.exit_code == 2 and "not one of auto, flat, ivf, hnsw, compact" in result.output

"""bench/speed.py's index part: search at 1M (auto index) and 10M (compact) vectors drawn from
a model fitted to real embeddings, recall@10 against exact search, build time and memory."""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
from results import table, write_section
from synthetic import FittedVectors, exact_top10
from tqdm import tqdm


def measure_index(index, queries: np.ndarray, truth: np.ndarray, build_s: float, n: int) -> dict:
    import faiss

    single = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None], index.candidates(10))
        single.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    found = index.search(queries, index.candidates(10))[1]
    batched = (time.perf_counter() - t) * 1000 / len(queries)
    from specimen_id.store.vectors import recall_at

    return {"kind": index.kind, "n": n, "build_s": build_s,
            "bytes_per_vector": index_bytes(faiss, index) / n, "median_ms": statistics.median(single),
            "p99_ms": float(np.percentile(single, 99)), "batched_ms": batched,
            "recall": recall_at(found, truth), "nprobe": index.effort}


def index_bytes(faiss, index) -> float:
    """Memory the index holds, as FAISS serialises it: codes, ids, centroids, PCA matrix and
    (ivf) the full vectors it re-ranks by."""
    return float(sum(faiss.serialize_index(part).nbytes for part in index.parts()))


def part_index(args, model: FittedVectors) -> None:
    from specimen_id.store.vectors import FaissIndex

    rows, results = [], []
    n = args.vectors
    queries, fields = model.queries(n, args.queries)
    with tqdm(total=n, desc=f"exact top-10 over {n:,}", leave=False) as bar:
        start = time.perf_counter()
        truth = exact_top10(model, n, queries, progress=bar)
        exact_ms = (time.perf_counter() - start) * 1000 / len(queries)
    vectors = np.concatenate([model.chunk(s, min(250_000, n - s)) for s in
                              tqdm(range(0, n, 250_000), desc="generate", leave=False)])
    start = time.perf_counter()
    index = FaissIndex.build(np.arange(n), vectors, 1, "bench", model.dim, "auto")
    results.append(measure_index(index, queries, truth, time.perf_counter() - start, n))
    del index, vectors

    n = args.compact_vectors
    queries, _ = model.queries(n, args.compact_queries)
    sample = np.random.default_rng(2).choice(n, 200, replace=False)  # tune on stored vectors
    tune_queries = np.stack([model.chunk(int(i) // 4 * 4, 4)[int(i) % 4] for i in sample])
    with tqdm(total=n, desc=f"exact top-10 over {n:,}", leave=False) as bar:  # one pass for both
        truth, tune_truth = np.split(exact_top10(model, n, np.vstack([queries, tune_queries]), progress=bar),
                                     [len(queries)])
    start = time.perf_counter()
    index = FaissIndex(model.dim, 1, "bench", "compact")
    index.train(np.concatenate([model.chunk(s, 4 * 8192) for s in range(0, min(n, 20 * 4 * 8192), 4 * 8192)]), n)
    for s in tqdm(range(0, n, 250_000), desc="add compact", leave=False):
        index.add(np.arange(s, min(n, s + 250_000)), model.chunk(s, min(250_000, n - s)))
    index.tune_on(tune_queries, tune_truth)
    results.append(measure_index(index, queries, truth, time.perf_counter() - start, n))

    for r in results:
        rows.append((f"{r['n']:,}", r["kind"], f"{r['build_s'] / 60:.1f} min", f"{r['bytes_per_vector']:.0f} B",
                     f"{r['recall']:.4f}", f"{r['median_ms']:.2f} / {r['p99_ms']:.2f} ms",
                     f"{r['batched_ms']:.3f} ms", r["nprobe"]))
    flat_bytes = model.dim * 4 + 8
    body = ("## Search at scale (bench/speed.py --parts index)\n\n"
            f"Vectors: {model.dim}-dimensional, from a model fitted to real embeddings (bench/synthetic.py: "
            "field centres and capture scatter follow the principal components of DSB 2018 fields and "
            "of their simulated re-captures), 4 captures per field; queries are fresh re-captures of "
            f"random fields. Recall@10 against exact search (brute force: {exact_ms:.0f} ms a query, "
            f"batched, at {args.vectors:,}). Exact flat storage costs {flat_bytes} B a vector. Compact "
            f"recall counts the true 10 among the {4 * 10} candidates it returns for the database to "
            f"re-rank by the stored vectors. {os.cpu_count()} cores.\n\n"
            + table(("vectors", "index", "build", "memory/vector", "recall@10", "single query median / p99",
                     "batched (per query)", "nprobe"), rows))
    print(body)
    write_section("speed-index", body)

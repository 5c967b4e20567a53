"""How many threads each library runs, and why: the one place these are set.

A query at the microscope is a chain of small steps on 2 cores, so threads that idle between
them cost more than they bring. Measured with bench/speed.py's warm query (see RESULTS.md):
- **OpenBLAS** (bundled with numpy and with OpenCV, which runs `cv2.gemm` on it): one thread.
  Its products here are a few MB, and its threads spin (`sched_yield`) after each call, which
  showed as system time and slowed whatever ran next.
- **Verification**: a shortlist is verified in parts on `VERIFY_THREADS` threads of our own
  (verification.verify_many); OpenCV and numpy release the GIL in its heavy steps.
- **FAISS (OpenMP)**: one thread for a single vector, which one thread scans as fast and
  without a spinning partner; all cores for batches (views, benchmarks, index building).
  Its own OpenBLAS (batched search of 20 or more vectors, training) keeps its threads.
- **OpenCV's own pool and OpenVINO** keep their defaults: limiting them gained nothing.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

VERIFY_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

_settled = False
_lock = threading.Lock()
_pool = None


def settle() -> None:
    """Set OpenBLAS to one thread in numpy and OpenCV, once per process (verification calls it
    before its first product: cv2 must be loaded for its OpenBLAS to be found, and importing
    it any earlier would make every import of specimen_id heavy)."""
    global _settled
    if _settled:
        return
    with _lock:
        if _settled:
            return
        import cv2  # noqa: F401  (loaded, so that its OpenBLAS is found)
        from threadpoolctl import ThreadpoolController

        for lib in ThreadpoolController().lib_controllers:
            if lib.internal_api == "openblas" and "faiss" not in os.path.basename(os.path.dirname(lib.filepath)):
                lib.set_num_threads(1)
        _settled = True


def pool():
    """The process's verification threads (started at first use)."""
    global _pool
    with _lock:
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="verify")
    return _pool


def _after_fork() -> None:
    """A forked child has none of its parent's threads: it starts its own pool when it needs
    one (the inherited one would queue work for threads that do not exist)."""
    global _pool, _lock
    _pool, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


@contextmanager
def faiss_threads(vectors: int):
    """FAISS's OpenMP threads for a search of this many vectors (in the calling thread)."""
    if vectors != 1:
        yield
        return
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)

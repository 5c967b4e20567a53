"""One identification service per process: the CLI's batch query, `watch` and the web app all
answer through it. It holds what is costly to make and safe to share:
- the store, opened once per thread (a SQLite connection stays in the thread that opened it),
  every one searching one loaded FAISS index (store.SharedIndex), read again only when the
  database's generation changes;
- the embedder, loaded once; its runtime gives each thread an inference request of its own;
- a bounded pool of worker threads for the CPU work (decode, embed, verify) and the waits for
  the write lock, so that an event loop (the web app's) never runs them and keeps serving pages.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from .errors import SpecimenIdError
from .store import SharedIndex, open_store

WORKERS_ENV = "SPECIMEN_ID_WORKERS"


class Service:
    def __init__(self, location, model: str | None = None, weights=None, workers: int | None = None):
        """A service over the database at `location` (a --db value, or an open store, which
        then serves the calling thread), with `model`/`weights` as the commands' options."""
        opened = location is not None and not isinstance(location, (str, os.PathLike))
        self._shared = location.shared_index if opened else SharedIndex()
        self.location = location.location if opened else location
        self.model, self.weights = model, weights
        self._local = threading.local()
        if opened:
            self._local.db = location
        # queries are CPU-bound: more workers than cores only queue inside the runtime
        self.workers = workers or _workers_from_env() or min(4, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def database(self):
        """This thread's store (opened on first use), sharing the service's index."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = open_store(self.location, self._shared)
            # closed as its thread ends: a SQLite connection otherwise waits for the cyclic
            # garbage collector (its statement cache refers back to it), and threads of a
            # server's pool come and go
            self._local.closer = _Closer(db)
        return db

    def embedder(self, check: bool = True):
        """The database's embedder (or the one the options name), loaded once per process."""
        from .models import embedder_for

        return embedder_for(self.database(), self.model, self.weights, check)

    def identify(self, capture, top_k: int | None = None, threshold: float | None = None,
                 log: bool = True) -> dict:
        """The answer for one decoded capture (search.answer)."""
        from .search.query import answer

        return answer(self.database(), capture, self.embedder(), top_k, threshold, log)

    def identify_files(self, paths, top_k: int | None = None, threshold: float | None = None,
                       log: bool = True):
        """One answer per file, in order; a refused file is a `refused` result (search.query).
        A generator over this thread's store: iterate it in the thread that called it."""
        from .search.query import query

        return query(self.database(), paths, top_k, threshold, embedder=self.embedder(), log=log)

    def enrol(self, jobs, metadata: dict | None = None, **options):
        """Enrol (specimen, files or captures) jobs (indexer.enroll_folders)."""
        from .indexer import enroll_folders

        return enroll_folders(self.database(), jobs, metadata, embedder=self.embedder(), **options)

    async def run(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) in the service's pool, awaited without blocking the event loop;
        calls waiting for a worker queue in the order they came."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="specimen-id")
        # the caller's context goes along (the audit trail's client address is a context variable)
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(context.run, fn, *args, **kwargs))

    def close(self) -> None:
        """Stop the pool (after the work it holds) and close this thread's store; the pool
        threads' stores close as their threads end (see _Closer)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def _workers_from_env() -> int | None:
    value = os.environ.get(WORKERS_ENV)
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise SpecimenIdError(f"{WORKERS_ENV}={value!r}: give a whole number of worker threads, 1 or more")
    return int(value)


class _Closer:
    """Closes a store when the thread that holds it ends (its thread-local values go then, in
    that thread)."""

    def __init__(self, db):
        self.db = db

    def __del__(self):
        try:
            self.db.close()
        except Exception:  # (at interpreter exit, or already closed)
            pass

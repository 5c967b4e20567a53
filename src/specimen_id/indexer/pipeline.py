"""The pipeline of enrolment and of batch queries: while the caller embeds one batch and
stores (or answers) it, worker threads read, decode, hash, measure and extract the local
features and CNN input of the captures ahead.

Threads rather than processes: OpenCV (decode, SIFT, resize), hashlib and OpenVINO release the
GIL for their heavy work, and captures need not be pickled between processes. Results come
back in input order, so duplicate checks and the database see the files as the user listed them.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

import numpy as np

from .. import local_features
from ..errors import ImageRefused


class Decoded(Protocol):
    """What `load` returns: an images.Capture (enrolment), or only pixels (reindex)."""

    pixels: np.ndarray


@dataclass
class Prepared:
    item: object  # what the caller asked for (a path, a capture id…)
    capture: Decoded | None = None
    error: ImageRefused | None = None
    features: local_features.LocalFeatures | None = None
    cnn_input: np.ndarray | None = None  # CHW float32, ready for the network

    def complete(self, embedder) -> "Prepared":
        """Compute what a worker skipped (see `wanted` in `prepare`)."""
        if self.features is None:
            self.features = local_features.extract(self.capture.pixels)
        if self.cnn_input is None:
            self.cnn_input = embedder.preprocess(self.capture.pixels)
        return self


def prepare(items, load, embedder, wanted=lambda capture: True, workers: int | None = None):
    """Yield a Prepared per item, in order. `load(item)` reads and decodes (raising
    ImageRefused for a bad file); features and CNN input are computed ahead only for captures
    `wanted` says are likely to be stored (a re-run's already-enrolled files are not)."""
    workers = workers or os.cpu_count() or 2
    ahead = 4 * workers  # bounds memory: at most this many decoded captures wait

    def work(item) -> Prepared:
        try:
            capture = load(item)
        except ImageRefused as e:
            return Prepared(item, error=e)
        done = Prepared(item, capture)
        return done.complete(embedder) if wanted(capture) else done

    with ThreadPoolExecutor(workers, thread_name_prefix="prepare") as pool:
        items = iter(items)
        pending = deque(pool.submit(work, item) for item in islice(items, ahead))
        try:
            while pending:
                result = pending.popleft().result()
                for item in islice(items, 1):
                    pending.append(pool.submit(work, item))
                yield result
        finally:  # a caller that stops early: what is queued is dropped, not done
            for future in pending:
                future.cancel()


def evidence(embedder, batch: list[Prepared]) -> tuple[np.ndarray, list[bytes]]:
    """Embeddings and local features (serialised, to store) of a batch of prepared captures."""
    for p in batch:
        p.complete(embedder)
    return embedder.embed_inputs(np.stack([p.cnn_input for p in batch])), [p.features.to_bytes() for p in batch]


def load_measured(source):
    """A file decoded (or a capture decoded already, e.g. by `watch`), its quality measured
    here, in a worker thread, not in the caller's."""
    from .. import images

    capture = source if isinstance(source, images.Capture) else images.load(source)
    capture.quality  # noqa: B018
    return capture

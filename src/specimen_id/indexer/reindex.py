"""Re-embedding every capture from its managed image, e.g. to switch models or after a change
of preprocessing; or recomputing only the local features, after a change of their recipe."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from .. import images, local_features
from ..models import embedder_for, probe
from ..progress import progress_bar
from .enroll import BATCH
from .pipeline import evidence, prepare


def reindex(db, model: str | None = None, weights=None, progress: bool = False) -> int:
    """Embed all captures with `model` (default: the database's own), recompute their local
    features, and switch the database to both in one transaction; returns the number of
    captures embedded. Nothing changes if any managed image cannot be read."""
    embedder = embedder_for(db, model, weights, check=False)
    with db.writing():
        files = db.capture_images()
        vectors = np.empty((len(files), embedder.dim), np.float32)
        features, batch = [], []

        def embed():
            done = len(features)
            vectors[done:done + len(batch)], more = evidence(embedder, batch)
            features.extend(more)
            bar.update(len(batch))
            batch.clear()

        with progress_bar(len(files), "reindex", progress) as bar:
            for prepared in prepare(files, lambda file: _Managed(images.stored_pixels(db.blobs.file(file[1]))), embedder):
                batch.append(prepared)
                if len(batch) == BATCH:
                    embed()
            if batch:
                embed()
        with db.unit_of_work():  # every vector is this machine's now, and so is the probe
            db.replace_embeddings(embedder.model_id, [i for i, _ in files], vectors, features,
                                  local_features.FEATURE_VERSION, embedder.name, embedder.weights_path)
            probe.record(db, embedder, replace=True)
    return len(files)


class _Managed(NamedTuple):
    pixels: np.ndarray


def reindex_features(db, progress: bool = False) -> int:
    """Recompute every capture's local features from its managed image with this version's
    recipe, keeping the CNN vectors and the index, and switch in one transaction; returns the
    number of captures. Nothing changes if any managed image cannot be read."""
    with db.writing():
        files = db.capture_images()

        def extract(file):  # in worker threads: decoding and SIFT release the GIL
            return local_features.extract(images.stored_pixels(db.blobs.file(file[1]))).to_bytes()

        with progress_bar(len(files), "features", progress) as bar, \
                ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="features") as pool:
            features = []
            for blob in pool.map(extract, files):
                features.append(blob)
                bar.update(1)
        db.replace_features([i for i, _ in files], features, local_features.FEATURE_VERSION)
    return len(files)

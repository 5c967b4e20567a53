"""`repair`: fix what `verify` finds, from the source of truth (SQLite rows and the managed
images): recompute missing or damaged embeddings and local features from the images, drop
embeddings of another model, rebuild the index and damaged renditions, remove leftover files.
What cannot be fixed that way (a missing or altered image, a damaged SQLite file, a name to
rename) is reported with the captures it affects; nothing is deleted to make verify pass."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import images, local_features
from ..errors import ImageRefused, ModelMismatch
from ..local_features import FEATURE_VERSION
from ..models import embedder_for, probe


@dataclass
class RepairReport:
    fixed: list[str] = field(default_factory=list)
    unfixable: list[str] = field(default_factory=list)
    after: object = None  # verify's report once repaired


def repair(db) -> RepairReport:
    out = RepairReport()
    with db.writing():
        found = db.verify(FEATURE_VERSION)
        if any(f.kind in ("sqlite", "schema") for f in found.problems):
            out.unfixable += [f.message for f in found.problems if f.kind in ("sqlite", "schema")]
            out.after = found
            return out
        bad_images = {f.capture_id for f in found.problems if f.kind == "image" and f.capture_id}
        for f in found.problems:
            if f.kind == "image":
                what = "restore that file" if f.capture_id else "the logged query cannot be shown again"
                out.unfixable.append(f"{f.message}: {what} (or remove the specimen)"
                                     if f.capture_id else f"{f.message}; {what}")
        stale = sorted({f.capture_id for f in found.problems
                        if f.kind in ("embedding", "features") and f.capture_id is not None})
        stray = sum(f.kind == "stray" for f in found.problems)
        _recompute(db, [c for c in stale if c not in bad_images], stray, out)
        for cid in sorted(set(stale) & bad_images):
            out.unfixable.append(f"capture id {cid}: embedding or local features cannot be "
                                 "recomputed without its image")
        indexed = db.vectors.sync(rebuild=True)
        if any(f.kind == "index" for f in found.findings):
            out.fixed.append(f"rebuilt index.faiss from the database ({indexed} vectors)")
        fixed, unfixable = db.clean(found, images.rgb8)
        out.fixed += fixed
        out.unfixable += unfixable
        out.after = db.verify(FEATURE_VERSION)
    return out


def _recompute(db, ids: list[int], stray: int, out: RepairReport) -> None:
    """Embeddings and local features of these captures, from their managed images, with the
    database's own model (and embeddings of other models dropped)."""
    if not ids and not stray:
        return
    embedder = embedder_for(db, check=False)
    if embedder.model_id != db.model_id:
        out.unfixable.append(f"this database's model {db.model_id} is not the one specimen-id now "
                             f"builds ({embedder.model_id}); run `specimen-id reindex`")
        return
    try:
        probe.require_same(db, embedder)  # recomputed vectors must be the other captures' kind
    except ModelMismatch as e:
        out.unfixable.append(str(e))
        return
    keys = dict(db.capture_images())
    done, vectors, features = [], [], []
    for cid in ids:
        try:
            pixels = images.load(db.blobs.file(keys[cid])).pixels
        except ImageRefused as e:
            out.unfixable.append(f"capture id {cid}: {e}")
            continue
        vectors.append(embedder.embed([pixels])[0])
        features.append(local_features.extract(pixels).to_bytes())
        done.append(cid)
    array = np.array(vectors, np.float32).reshape(len(done), embedder.dim)
    db.restore_vectors(embedder.model_id, done, array, features, local_features.FEATURE_VERSION)
    if done:
        out.fixed.append(f"recomputed the embedding and local features of {len(done)} capture(s) "
                         "from their images")
    if stray:
        out.fixed.append(f"dropped {stray} embedding(s) of another model")

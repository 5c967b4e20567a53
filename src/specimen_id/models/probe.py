"""Does this machine embed as the machines that filled a database did?

A lab's machines share one database, and the model_id names the network, weights, input recipe
and precision, but not the arithmetic that runs them: another OpenVINO or NNCF release, or a
CPU that rounds int8 otherwise (quantize.py), can move every vector under the same model_id,
and a database that mixes two such machines answers wrongly without a word. So the first
enrolment stores the vectors this machine makes of a few fields shipped with the package (the
probe), and every process that embeds for the database compares its own first: below
MIN_COSINE it refuses, naming the libraries and CPU of both sides. A database filled before
the probe existed gets one only once a few of its captures, embedded again here from their
managed images, give back their stored vectors.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

import numpy as np

PROBE_FIELDS = 4  # the first int8 calibration fields (quantize.FIELDS), RGB as shipped
# Runs on one machine give the same vectors, and f32 on two CPUs agrees to 1e-5 (runtime.py);
# an int8 model quantized or run otherwise moved them by a hundredth or more (quantize.py).
MIN_COSINE = 0.999
SETTING = "probe"


def vectors(embedder) -> np.ndarray:
    """This process's vectors of the probe fields, computed once per embedder."""
    found = getattr(embedder, "_probe", None)
    if found is None:
        import cv2

        fields = [cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in _fields()]
        found = embedder._probe = embedder.embed(fields)
    return found


def require_same(db, embedder) -> None:
    """Refuse (ModelMismatch) when the database's stored probe, for this model_id and these
    fields, is not what this machine makes of them; nothing to compare when none is stored."""
    found = _applicable(db, embedder)
    if found is None:
        return
    stored, there = found
    alike = embedder.__dict__.setdefault("_probes_alike", set())
    if stored["vectors"] in alike:  # (a web app or watcher asks once per capture)
        return
    mine = vectors(embedder)
    cosine = float(np.min(np.sum(there.reshape(mine.shape) * mine, axis=1))) if there.size == mine.size else -1.0
    if cosine >= MIN_COSINE:
        alike.add(stored["vectors"])
    elif db.count("captures"):  # (an emptied database mixes nothing: its next enrolment re-stamps it)
        _refuse(db, f"cosine {cosine:.4f} on the package's reference fields, under {MIN_COSINE}; there "
                    f"{_machine(stored)}, here {_machine(_this_machine())}")


def record(db, embedder, replace: bool = False) -> None:
    """Store this machine's probe, unless one for this model_id is there (then it must match);
    `replace` when every vector was just made here (reindex). Called inside the write lock."""
    if not replace and db.count("captures"):  # (an empty database takes this machine's)
        if _applicable(db, embedder) is not None:
            require_same(db, embedder)
            return
        _require_stored_alike(db, embedder)
    db.record_probe({"model_id": embedder.model_id, "fields": _field_hashes(), **_this_machine(),
                     "vectors": base64.b64encode(vectors(embedder).astype(np.float32).tobytes()).decode()})


def _require_stored_alike(db, embedder) -> None:
    """Before a database's first probe: a few stored captures, embedded again here, must give
    their stored vectors back (else this machine is not the one that filled it)."""
    from .. import images
    from ..errors import SpecimenIdError

    if db.model_id != embedder.model_id:
        return  # a new database, or one being switched to this model
    captures = db.capture_images()[:PROBE_FIELDS]
    stored, pairs = db.vectors.vectors_of([cid for cid, _ in captures]), []
    for cid, key in captures:
        try:
            pairs.append((stored[cid], images.stored_pixels(db.blobs.file(key))))
        except (KeyError, OSError, SpecimenIdError):  # no vector, or a missing or damaged image
            continue  # (`verify` says so)
    if not pairs:
        return
    again = embedder.embed([pixels for _, pixels in pairs])
    # the median: one image damaged since it was embedded is not this machine's doing
    cosine = float(np.median(np.sum(again * np.stack([vector for vector, _ in pairs]), axis=1)))
    if cosine < MIN_COSINE:
        _refuse(db, f"cosine {cosine:.4f} between stored captures' vectors and this machine's, under "
                    f"{MIN_COSINE}; here {_machine(_this_machine())}")


def filled_by(db) -> str | None:
    """The libraries and CPU of the machine whose probe the database holds (`info`), if any."""
    stored = _stored(db)
    return _machine(stored) if stored else None


def _refuse(db, evidence: str):
    from ..errors import ModelMismatch

    raise ModelMismatch(
        f"{db.where}: this machine (its libraries or its CPU) embeds differently from the machine that "
        f"filled this database ({evidence}): use the versions it was filled with, or run `specimen-id "
        "reindex` to re-embed every capture here (the other machines then need this machine's)")


def _stored(db) -> dict | None:
    """The stored probe, if it names the machine that made it."""
    stored = db.setting(SETTING)
    return stored if isinstance(stored, dict) and isinstance(stored.get("libraries"), dict) else None


def _applicable(db, embedder) -> tuple[dict, np.ndarray] | None:
    """The stored probe and its vectors when it speaks of this model and these fields (another
    version of the package probes others); one damaged by hand counts as none."""
    stored = _stored(db)
    if stored is None or stored.get("model_id") != embedder.model_id or stored.get("fields") != _field_hashes():
        return None
    try:
        return stored, np.frombuffer(base64.b64decode(stored.get("vectors"), validate=True), np.float32)
    except (TypeError, ValueError):
        return None


def _fields():
    from .quantize import FIELDS

    return sorted(FIELDS.glob("*.jpg"))[:PROBE_FIELDS]


@lru_cache(maxsize=1)
def _field_hashes() -> list[str]:
    """(read once: the shipped fields do not change while the process runs, and every query asks)"""
    return [hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in _fields()]


def _this_machine() -> dict:
    import platform

    from .runtime import libraries

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"libraries": libraries(), "cpu": cpu}


def _machine(facts: dict) -> str:
    libraries = ", ".join(f"{name} {version or 'absent'}" for name, version in sorted(facts["libraries"].items()))
    return f"{libraries} on {facts.get('cpu') or 'an unnamed CPU'}"

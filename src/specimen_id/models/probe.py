"""Does this machine embed as the machines that filled a database did?

A lab's machines share one database, and the model_id names the network, weights, input recipe
and precision, but not the arithmetic that runs them: another OpenVINO or NNCF release, or a
CPU that rounds int8 otherwise (quantize.py), can move every vector under the same model_id,
and a database that mixes two such machines answers wrongly without a word. So the first
enrolment stores the vectors this machine makes of a few fields shipped with the package (the
probe), and every process that embeds for the database compares its own first: below
MIN_COSINE it refuses, naming the library versions of both sides.
"""

from __future__ import annotations

import base64
from importlib import metadata

import numpy as np

PROBE_FIELDS = 4  # the first int8 calibration fields (quantize.FIELDS), RGB as shipped
# Runs of one machine give the same vectors to 1e-6, and f32 on two CPUs to 1e-5; an int8 model
# quantized or run otherwise moves them by a hundredth or more (quantize.py).
MIN_COSINE = 0.999
SETTING = "probe"
LIBRARIES = ("openvino", "nncf")
_alike: set = set()  # (embedder, stored probe) pairs found alike in this process


def vectors(embedder) -> np.ndarray:
    """This process's vectors of the probe fields, computed once per embedder."""
    found = getattr(embedder, "_probe", None)
    if found is None:
        import cv2

        from .quantize import FIELDS

        fields = [cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                  for p in sorted(FIELDS.glob("*.jpg"))[:PROBE_FIELDS]]
        found = embedder._probe = embedder.embed(fields)
    return found


def require_same(db, embedder) -> None:
    """Refuse (ModelMismatch) when the database's stored probe, for this model_id, is not what
    this machine makes of the same fields; nothing to compare when none is stored."""
    stored = db.setting(SETTING)
    if not stored or stored["model_id"] != embedder.model_id:
        return
    seen = (id(embedder), stored["vectors"])
    if seen in _alike:  # (a web app or watcher asks once per capture)
        return
    there, mine = np.frombuffer(base64.b64decode(stored["vectors"]), np.float32), vectors(embedder)
    cosine = float(np.min(np.sum(there.reshape(mine.shape) * mine, axis=1))) if there.size == mine.size else -1.0
    if cosine >= MIN_COSINE:
        _alike.add(seen)
        return
    from ..errors import ModelMismatch

    raise ModelMismatch(
        f"{db.where}: this machine embeds differently from the machine that filled this database "
        f"(cosine {cosine:.4f} on the package's reference fields, under {MIN_COSINE}; there "
        f"{_versions(stored['libraries'])}, here {_versions(libraries())}): install the versions it "
        "was filled with, or run `specimen-id reindex` to re-embed every capture here (the other "
        "machines then need this machine's versions)")


def record(db, embedder, replace: bool = False) -> None:
    """Store this machine's probe, unless one for this model_id is there (then it must match);
    `replace` when every vector was just made here (reindex). Called inside the write lock."""
    stored = db.setting(SETTING)
    if stored and stored["model_id"] == embedder.model_id and not replace:
        require_same(db, embedder)
        return
    db.record_probe({"model_id": embedder.model_id, "libraries": libraries(),
                     "vectors": base64.b64encode(vectors(embedder).astype(np.float32).tobytes()).decode()})


def libraries() -> dict:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _versions(libraries_: dict) -> str:
    return ", ".join(f"{name} {version or 'absent'}" for name, version in sorted(libraries_.items()))

"""Captures to L2-normalised float32 vectors, tagged with the model_id that made them."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .backbones import DEFAULT_MODEL, Backbone, ModelSpec, load_backbone, model_spec
from .preprocess import PREPROCESS_VERSION, pooled, to_input
from .runtime import compile_trunk

# Images per forward pass. Measured on 2 cores (bench/speed.py, OpenVINO int8): 342 images/s
# at 1, 399 at 4, 448 at 16. 4 keeps most of the gain over 1 while a batch's activations stay
# small; enrolment's speed is set by SIFT, not by this.
BATCH = 4


class Embedder:
    """A backbone's feature map pooled into a unit vector (regional GeM, see preprocess). Inner
    product of two embeddings is their cosine similarity, which is what the FAISS index ranks by."""

    def __init__(self, spec: ModelSpec, weights_path: Path | None = None,
                 runtime: str | None = None, build=None):
        self.spec = spec  # name, weights, input size and normalisation
        self.weights_path = weights_path  # the explicit weights file, None for the default
        self.name = spec.name
        # name, weights and the whole recipe from pixels to vector (CNN input and pooling,
        # arithmetic): a database never mixes two model_ids. The local features have a version
        # of their own (local_features.FEATURE_VERSION), so a change there recomputes them and
        # not the vectors. The runtime is not part of it: in f32 both give the same vectors to
        # within 1e-5.
        self.trunk = compile_trunk(spec, build or (lambda: spec), runtime)
        # int8 and bf16 move the vectors (cosine ~0.93 and ~0.996 to f32): models of their own
        precision = "" if self.trunk.precision == "f32" else f"+{self.trunk.precision}"
        self.model_id = f"{spec.name}:{spec.weights_sha256[:16]}:p{PREPROCESS_VERSION}{precision}"
        probe = np.zeros((1, 3, spec.input_size, spec.input_size), np.float32)
        self.dim = int(self.trunk(probe).shape[1])

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        """A decoded capture (any dtype/channels, see preprocess) to the network's input."""
        spec = self.spec
        return to_input(pixels, spec.input_size, spec.mean, spec.std)

    def embed_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """(n, 3, size, size) network inputs to (n, dim) unit float32 vectors (regional GeM)."""
        out = np.empty((len(inputs), self.dim), np.float32)
        for start in range(0, len(inputs), BATCH):
            out[start:start + BATCH] = pooled(self.trunk(inputs[start:start + BATCH]))
        return out

    def embed(self, pixel_list) -> np.ndarray:
        """Decoded captures to an (n, dim) float32 array of unit vectors."""
        return self.embed_inputs(np.stack([self.preprocess(p) for p in pixel_list]))


def split_precision(model_id: str) -> tuple[str, str]:
    """A model_id without its precision suffix (as Embedder writes it), and that precision."""
    recipe, _, last = model_id.rpartition("+")
    if last.startswith(("int8", "bf16")):
        return recipe, last.split("-")[0]
    return model_id, "f32"


def load_embedder(name: str = DEFAULT_MODEL, weights=None, runtime: str | None = None) -> Embedder:
    """A ready embedder; kept per (model, weights file, runtime) so that a long-lived process
    (tests, the web app, the Python API) loads each model once. PyTorch is imported only when
    the network has to be built: to run it, or to convert it the first time."""
    import os

    from .runtime import PRECISION_ENV

    key = (name, runtime, os.environ.get(PRECISION_ENV), None)
    if weights is not None:
        model_spec(name, weights)  # a missing weights file: the clear error, here
        weights = Path(weights).resolve()
        stat = weights.stat()
        key = (*key[:3], str(weights), stat.st_size, stat.st_mtime_ns)
    with _loading:  # threads of the web app asking at once load it once
        if key not in _loaded:
            spec = model_spec(name, weights)
            if spec is None:  # a torchvision download: only torch knows where it goes
                spec = load_backbone(name, weights)
            built = spec if isinstance(spec, Backbone) else None
            _loaded[key] = Embedder(spec, weights, runtime,
                                    build=lambda: built or load_backbone(name, weights))
        return _loaded[key]


_loaded: dict = {}
_loading = threading.Lock()


def embedder_for(db, model: str | None = None, weights=None, check: bool = True) -> Embedder:
    """The embedder a database works with: its recorded model (and weights file) unless another
    is named; with `check`, refused when it would mix models in one index, or verify against
    local features of another recipe."""
    recorded = db.setting("model_name")
    name = model or recorded or DEFAULT_MODEL
    if weights is None and name == recorded:
        weights = db.setting("weights_path")
    embedder = load_embedder(name, weights)
    if check:
        from ..local_features import FEATURE_VERSION
        from .probe import require_same

        require_model(db, embedder.model_id)
        require_same(db, embedder)  # the same model_id, but does this machine embed alike?
        db.require_features(FEATURE_VERSION)
    return embedder


def require_model(db, model_id: str) -> None:
    """Embeddings of one model only: another is refused while captures exist, with what to do
    about it (the store refuses it too, plainly; here the ids are read)."""
    from ..errors import ModelMismatch
    from .runtime import PRECISION_ENV

    current = db.model_id
    if current and current != model_id and db.count("captures"):
        from .quantize import INT8_RECIPE

        (recipe, precision), (wanted, asked) = split_precision(current), split_precision(model_id)
        # the setting reads them only where that precision still makes these very vectors
        readable = current == wanted + {"f32": "", "int8": f"+int8-{INT8_RECIPE}", "bf16": "+bf16"}.get(precision, "?")
        if recipe == wanted and precision != asked and readable:  # e.g. f32 vectors from before int8
            fix = (f"set {PRECISION_ENV}={precision} to use it as it is, or run `specimen-id "
                   "reindex` to re-embed every capture in this precision")
        elif current.split(":")[0] == model_id.split(":")[0]:
            # the same network under another id: this version prepares images or quantizes
            # the network differently from the one that filled the database
            fix = "run `specimen-id reindex` to re-embed every capture as this version does"
        else:
            fix = "run `specimen-id reindex --model NAME` to re-embed every capture with another model"
        raise ModelMismatch(f"this database holds embeddings of {current}, not {model_id}; {fix}")

"""Captures to L2-normalised float32 vectors, tagged with the model_id that made them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..local_features import FEATURE_VERSION
from .backbones import DEFAULT_MODEL, Backbone, load_backbone
from .preprocess import GEM_P, PREPROCESS_VERSION, to_batch


class Embedder:
    """A backbone's GeM-pooled feature map as a unit vector. Inner product of two embeddings is their
    cosine similarity, which is what the FAISS index ranks by."""

    def __init__(self, backbone: Backbone, weights_path: Path | None = None):
        import torch

        self.backbone = backbone
        self.weights_path = weights_path  # the explicit weights file, None for the default
        self.name = backbone.name
        # name, weights and the whole recipe from pixels to stored evidence (CNN input and
        # pooling, local features): a database never mixes two model_ids.
        self.model_id = (f"{backbone.name}:{backbone.weights_sha256[:16]}:"
                         f"p{PREPROCESS_VERSION}+{FEATURE_VERSION}")
        # channels-last is faster for these depthwise/1x1-heavy CPU graphs, same answers.
        backbone.net.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            probe = torch.zeros(1, 3, backbone.input_size, backbone.input_size)
            self.dim = int(backbone.trunk(probe).shape[1])

    def embed(self, pixel_list, batch_size: int = 1) -> np.ndarray:
        """Decoded captures (any dtype/channels, see preprocess) to an (n, dim) float32 array.
        Batch 1 is fastest on a small CPU (measured on 2 cores: 67 images/s at 1, 58 at 8,
        45 at 32): the per-image activations stay in cache."""
        import torch

        out = np.empty((len(pixel_list), self.dim), np.float32)
        bb = self.backbone
        for start in range(0, len(pixel_list), batch_size):
            batch = to_batch(pixel_list[start:start + batch_size], bb.input_size, bb.mean, bb.std)
            x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                fmap = bb.trunk(x)
            pooled = fmap.clamp(min=1e-6).pow(GEM_P).mean(dim=(2, 3)).pow(1 / GEM_P)
            out[start:start + len(batch)] = pooled.numpy()
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def load_embedder(name: str = DEFAULT_MODEL, weights=None) -> Embedder:
    """A ready embedder; kept per (model, weights file) so that a long-lived process (tests,
    the web app, the Python API) loads each model once."""
    key = (name, None)
    if weights is not None and Path(weights).is_file():
        weights = Path(weights).resolve()
        stat = weights.stat()
        key = (name, str(weights), stat.st_size, stat.st_mtime_ns)
    elif weights is not None:
        return Embedder(load_backbone(name, weights))  # raises the clear "no such file" error
    if key not in _loaded:
        _loaded[key] = Embedder(load_backbone(name, weights), weights)
    return _loaded[key]


_loaded: dict = {}


def embedder_for(db, model: str | None = None, weights=None, check: bool = True) -> Embedder:
    """The embedder a database works with: its recorded model (and weights file) unless another
    is named; with `check`, refused when it would mix models in one index."""
    recorded = db.setting("model_name")
    name = model or recorded or DEFAULT_MODEL
    if weights is None and name == recorded:
        weights = db.setting("weights_path")
    embedder = load_embedder(name, weights)
    if check:
        db.require_model(embedder.model_id)
    return embedder

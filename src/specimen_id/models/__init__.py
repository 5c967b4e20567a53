"""CNN backbones and the preprocessing that feeds them (torch is imported only when a model
is loaded, never by importing this package)."""

from .backbones import DEFAULT_MODEL, MODEL_NAMES, load_backbone
from .embedder import Embedder, embedder_for, load_embedder

__all__ = ["DEFAULT_MODEL", "MODEL_NAMES", "Embedder", "embedder_for", "load_backbone", "load_embedder"]

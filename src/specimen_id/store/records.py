"""The typed records that cross the storage interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


@dataclass
class CaptureRecord:
    """One capture to add: its specimen (created with its first capture), the file's bytes
    (kept as a blob by add_captures), what was read from the file, and its evidence."""

    specimen: str
    data: bytes = field(repr=False)
    extension: str
    file_sha256: str
    pixel_sha256: str
    original_name: str
    format: str
    width: int
    height: int
    dtype: str
    channels: int
    vector: np.ndarray
    features: bytes
    exif: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    acquisition: dict | None = None

    @classmethod
    def of(cls, specimen: str, capture, vector, features: bytes) -> "CaptureRecord":
        """The record of a decoded capture (an images.Capture)."""
        return cls(specimen=specimen, data=capture.data, extension=capture.extension,
                   file_sha256=capture.file_sha256,
                   pixel_sha256=capture.pixel_sha256, original_name=capture.name, format=capture.format,
                   width=capture.width, height=capture.height, dtype=capture.dtype, channels=capture.channels,
                   vector=vector, features=features, exif=capture.exif, quality=capture.quality,
                   acquisition=capture.acquisition)


class Hit(NamedTuple):
    """A stored vector found near a query vector: its capture and their cosine similarity."""

    capture_id: int
    similarity: float

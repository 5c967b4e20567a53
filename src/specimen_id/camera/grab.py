"""Steady captures through OpenCV: open a camera (an index or /dev/videoN) or a video file the
same way, let auto exposure and white balance settle on a few warm-up frames, lock them and
focus where the camera allows, average K frames in float to cut sensor noise (its standard
deviation falls as 1/sqrt(K) on a still specimen) and keep the result as lossless PNG, with
how it was taken written into the PNG itself (read back by images.decode, stored on enrolment)."""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import CaptureFailed
from ..images import ACQUISITION_KEY
from ..store import now, write_atomic
from . import v4l2

SETTLE = 2  # frames dropped after locking: the first may still be exposed the old way


def source_of(device: str) -> int | str:
    """A camera index ("0") or a path (a /dev/videoN node or a video file)."""
    return int(device) if device.isdigit() else device


def device_node(source: int | str) -> str | None:
    """The V4L2 device node behind a source, if it is one."""
    node = f"/dev/video{source}" if isinstance(source, int) else source
    return node if node.startswith("/dev/video") and os.path.exists(node) else None


def open_source(source: int | str):
    import cv2

    if isinstance(source, str) and not source.startswith("/dev/") and not Path(source).is_file():
        raise CaptureFailed(f"{source}: no such camera or video file")
    cap = cv2.VideoCapture(source, cv2.CAP_V4L2) if device_node(source) and sys.platform == "linux" \
        else cv2.VideoCapture(source)
    if not cap.isOpened():
        raise CaptureFailed(f"{source}: cannot be opened as a camera or video (see `specimen-id cameras`)")
    return cap


def lock_controls(cap, source) -> dict:
    """Lock exposure, white balance and focus where the camera allows: through v4l2-ctl for a
    V4L2 device when it is installed, else through OpenCV's properties (which a video file,
    having no controls, refuses). Returns what was locked and what was not, and why."""
    node = device_node(source)
    if node and v4l2.available():
        try:
            status, not_locked, values = v4l2.lock(node)
            return {"method": "v4l2-ctl", "controls": status, "not_locked": not_locked, "v4l2": values}
        except (OSError, ValueError) as e:
            status = {"v4l2-ctl": str(e)}
    else:
        status = {}
    return {"method": "opencv", **_lock_with_opencv(cap, status)}


def _lock_with_opencv(cap, status: dict) -> dict:
    import cv2

    # OpenCV's V4L2 backend takes the raw V4L2 menu value (1 = Manual Mode); others 0.25.
    attempts = {"exposure": (cv2.CAP_PROP_AUTO_EXPOSURE, (1, 0.25)),
                "white_balance": (cv2.CAP_PROP_AUTO_WB, (0,)),
                "focus": (cv2.CAP_PROP_AUTOFOCUS, (0,))}
    not_locked = []
    for aspect, (prop, values) in attempts.items():
        if any(cap.set(prop, v) and cap.get(prop) == v for v in values):
            status[aspect] = f"locked through OpenCV property {prop}"
        else:
            status[aspect] = "the source refused OpenCV's property (no such control)"
            not_locked.append(aspect)
    return {"controls": status, "not_locked": not_locked}


def _read(cap, count: int, source, done: int) -> list[np.ndarray]:
    frames = []
    for _ in range(count):
        ok, frame = cap.read()
        if not ok or frame is None:
            raise CaptureFailed(f"{source}: gave {done + len(frames)} frame(s), then no more")
        frames.append(frame)
    return frames


def average(cap, frames: int, source, done: int = 0) -> np.ndarray:
    """Mean of the next `frames` frames, accumulated in float64 (BGR, as OpenCV gives it)."""
    total = None
    for i in range(frames):
        (frame,) = _read(cap, 1, source, done + i)
        if total is None:
            total = np.zeros(frame.shape, np.float64)
        elif frame.shape != total.shape:
            raise CaptureFailed(f"{source}: frame size changed from {total.shape} to {frame.shape}")
        total += frame
    return total / frames


def png_with_text(pixels: np.ndarray, key: str, text: str) -> bytes:
    """Lossless PNG of BGR(A)/grey pixels (8- or 16-bit) with one tEXt chunk after the header
    (OpenCV writes 16-bit colour PNG, which Pillow cannot, but writes no text chunks)."""
    import cv2

    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise CaptureFailed("the averaged frame could not be encoded as PNG")
    data = encoded.tobytes()
    body = key.encode("latin-1") + b"\0" + text.encode("latin-1")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    ihdr_end = 8 + 8 + 13 + 4  # signature, then IHDR: length, type, 13 bytes, CRC
    return data[:ihdr_end] + chunk + data[ihdr_end:]


def capture(device: str, out: Path, frames: int = 8, warmup: int = 5, bit_depth: int = 8) -> dict:
    """Take one steady capture from a camera or video file into `out` (PNG); returns how it
    was taken (also written into the PNG)."""
    source = source_of(device)
    cap = open_source(source)
    try:
        _read(cap, warmup, source, 0)  # auto exposure and white balance settle on these
        locks = lock_controls(cap, source)
        _read(cap, SETTLE, source, warmup)
        mean = average(cap, frames, source, warmup + SETTLE)
    finally:
        cap.release()
    scale = 257 if bit_depth == 16 else 1  # 0..255 onto 0..65535 keeps the fractions K frames give
    pixels = np.clip(np.rint(mean * scale), 0, 255 * scale).astype(np.uint16 if bit_depth == 16 else np.uint8)
    facts = {"device": str(device), "frames": frames, "warmup": warmup, "skipped": warmup + SETTLE,
             "width": int(pixels.shape[1]), "height": int(pixels.shape[0]), "bit_depth": bit_depth,
             **locks, "captured_at": now(), "software_version": __version__}
    write_atomic(Path(out), png_with_text(pixels, ACQUISITION_KEY, json.dumps(facts)))
    return facts

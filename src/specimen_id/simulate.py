"""Simulated re-captures: what a USB microscope does to one field between two shots.

Used to make the demo's query images, by the benchmarks, and (later) by calibration when a
database has too few real repeat captures. Every draw comes from the caller's seeded
numpy Generator, so a run is reproducible; the parameter ranges are listed in reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Recapture:
    """Ranges of the nuisance between two captures of the same field."""

    shift: float = 0.08  # stage shift either way, fraction of the field (moves out of view)
    rotation: float = 3.0  # degrees, either way
    scale: float = 0.04  # zoom/focus breathing, fraction either way
    blur: float = 1.2  # focus blur: Gaussian sigma up to this, in pixels
    gain: float = 0.15  # illumination gain, fraction either way
    gradient: float = 0.12  # uneven illumination: linear ramp, fraction across the field
    noise: float = 4.0  # sensor noise sigma up to this, in 8-bit levels
    jpeg: tuple = (70, 95)  # JPEG quality range

    def describe(self) -> dict:
        return asdict(self)

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One simulated re-capture of an HxWx3 uint8 field, before JPEG encoding."""
        import cv2

        h, w = rgb.shape[:2]
        # The camera sees a window of the field (all but a `shift` margin on each side), and
        # the stage puts that window anywhere within the margin: what leaves the view is
        # replaced by real neighbouring specimen, as under a microscope.
        view = 1 - 2 * self.shift
        angle = rng.uniform(-self.rotation, self.rotation)
        zoom = (1 + rng.uniform(-self.scale, self.scale)) / view
        dx, dy = rng.uniform(-self.shift, self.shift, 2) * (w, h)
        m = cv2.getRotationMatrix2D((w / 2 + dx, h / 2 + dy), angle, zoom)
        m[:, 2] -= (dx, dy)
        # Rotation can reach slightly past the field's edge: mirror there rather than paint
        # a black border that would be an easy cue.
        out = cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        sigma = rng.uniform(0, self.blur)
        if sigma > 0.3:
            out = cv2.GaussianBlur(out, (0, 0), sigma)
        out = out.astype(np.float32)
        direction = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = ((xx / w - 0.5) * np.cos(direction) + (yy / h - 0.5) * np.sin(direction))
        light = (1 + rng.uniform(-self.gain, self.gain)) * (1 + self.gradient * ramp)
        out = out * light[:, :, None] + rng.normal(0, rng.uniform(0.5, self.noise), out.shape)
        return np.clip(out, 0, 255).astype(np.uint8)

    def jpeg_bytes(self, rgb: np.ndarray, rng: np.random.Generator) -> bytes:
        """A re-capture encoded as the camera would save it."""
        import cv2

        quality = int(rng.integers(self.jpeg[0], self.jpeg[1] + 1))
        bgr = cv2.cvtColor(self.apply(rgb, rng), cv2.COLOR_RGB2BGR)
        return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


@dataclass(frozen=True)
class FixedPattern:
    """What every capture of one microscope shares, whatever the specimen: a circular field
    stop, vignetting and dust on the sensor. Drawn once per microscope (seed) and laid over
    each capture at the same sensor position, after the stage has moved the specimen."""

    stop: float = 0.46  # field stop radius, fraction of the shorter side (dark outside)
    stop_edge: float = 0.02  # soft edge of the stop, fraction of the shorter side
    stop_level: float = 0.08  # light left outside the stop
    vignette: float = 0.35  # light lost at the stop's rim, compared with the centre
    dust: int = 6  # dark specks on the sensor
    dust_size: tuple = (0.01, 0.03)  # their radius, fraction of the shorter side
    dust_depth: tuple = (0.3, 0.7)  # light they take away at their centre
    seed: int = 7

    def describe(self) -> dict:
        return asdict(self)

    def gain(self, shape: tuple[int, int]) -> np.ndarray:
        """The pattern as an HxW multiplicative gain for captures of this shape."""
        import cv2

        h, w = shape
        rng = np.random.default_rng(self.seed)
        side = min(h, w)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.hypot(xx - w / 2, yy - h / 2) / side
        inside = np.clip((self.stop - r) / self.stop_edge + 0.5, 0, 1)
        light = (1 - self.vignette * np.clip(r / self.stop, 0, 1) ** 2)
        gain = (self.stop_level + (1 - self.stop_level) * inside) * light
        specks = np.zeros((h, w), np.float32)
        for _ in range(self.dust):
            angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0, self.stop * 0.9) * side
            cx, cy = w / 2 + radius * np.cos(angle), h / 2 + radius * np.sin(angle)
            size = rng.uniform(*self.dust_size) * side
            depth = rng.uniform(*self.dust_depth)
            specks = np.maximum(specks, depth * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * size ** 2)))
        return cv2.GaussianBlur(gain, (0, 0), 1.0) * (1 - specks)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """An HxWx3 uint8 capture seen through this microscope."""
        gain = self.gain(rgb.shape[:2])
        return np.clip(rgb.astype(np.float32) * gain[:, :, None], 0, 255).astype(np.uint8)

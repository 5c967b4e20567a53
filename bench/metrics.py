"""Figures of merit the accuracy benchmark reports for specimen-id and its baselines alike."""

from __future__ import annotations

import numpy as np


def rates(genuine, impostor, fmr_targets=(0.01, 0.001)) -> dict:
    """TAR at the threshold that keeps FMR at or under each target, and the EER."""
    genuine, impostor = np.asarray(genuine, float), np.asarray(impostor, float)
    out = {}
    candidates = np.unique(np.concatenate([impostor, genuine, [np.inf]]))
    for target in fmr_targets:
        t = min(t for t in candidates if np.mean(impostor >= t) <= target)
        out[target] = float(np.mean(genuine >= t))
    grid = np.unique(np.concatenate([impostor, genuine]))
    fmr = np.array([np.mean(impostor >= t) for t in grid])
    fnmr = np.array([np.mean(genuine < t) for t in grid])
    i = int(np.argmin(np.abs(fmr - fnmr)))
    out["eer"] = float((fmr[i] + fnmr[i]) / 2)
    return out


def ece(decided: list[dict], bins: int = 10) -> float:
    """Expected calibration error over each query's two best candidates (the bulk of easy
    impostors near 0 would make any model look calibrated)."""
    pairs = [(s, float(t)) for d in decided for t, s in d["top2"]]
    p, y = np.array([s for s, _ in pairs]), np.array([t for _, t in pairs])
    total = 0.0
    for lo in np.linspace(0, 1, bins + 1)[:-1]:
        inside = (p >= lo) & ((p < lo + 1 / bins) if lo + 1 / bins < 1 else (p <= 1))
        if inside.any():
            total += inside.mean() * abs(p[inside].mean() - y[inside].mean())
    return float(total)

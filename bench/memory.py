"""Peak memory for files whose decoded size is far beyond their file size ("bombs"), against an
ordinary capture: each step (enrol, query, the web app's thumbnails) runs in a subprocess of
its own and reports its peak resident set size (ru_maxrss), so nothing else in this process
counts. The target: under 3 GB for any accepted file, and a refusal by name over the budget.

    .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from results import table, write_section  # noqa: E402

ORDINARY = ROOT / "data" / "specimens" / "he-tissue-a" / "capture-1.png"
TARGET_GB = 3.0

# the web app's pages asking for one capture's three renditions at once, in-process HTTP
THUMBNAILS = """
import sys
from concurrent.futures import ThreadPoolExecutor
from fastapi.testclient import TestClient
from specimen_id.store import Database
from specimen_id.web import create_app
with Database(sys.argv[1]) as db:
    uuid = db.captures(db.specimen(sys.argv[2])["id"])[-1]["uuid"]
client = TestClient(create_app(sys.argv[1]), base_url="http://127.0.0.1")
with ThreadPoolExecutor(3) as pool:
    codes = [r.status_code for r in pool.map(lambda s: client.get(f"/images/capture/{uuid}?size={s}"), (256, 512, 0))]
assert codes == [200] * 3, codes
"""

# measured in a wrapper so that only the step's own process counts
PEAK = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:], capture_output=True).returncode; "
        "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def bombs(folder: Path) -> dict[str, Path]:
    """1 MB-class files that decode to hundreds of MB, made here (not kept in the repo)."""
    made = {}
    rgba = np.zeros((10000, 10000, 4), np.uint16)
    rgba[::50] = 40000
    rgba[..., 3] = 65535
    made["PNG 10000x10000 16-bit RGBA"] = folder / "rgba16.png"
    cv2.imwrite(str(made["PNG 10000x10000 16-bit RGBA"]), rgba, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    del rgba
    grey = np.zeros((10000, 10000), np.float32)
    grey[::40] = 1.0
    made["TIFF 10000x10000 float32 grey (deflate)"] = folder / "float.tif"
    cv2.imwrite(str(made["TIFF 10000x10000 float32 grey (deflate)"]), grey, [cv2.IMWRITE_TIFF_COMPRESSION, 8])
    del grey
    rgb = np.full((9000, 9000, 3), 128, np.uint8)
    rgb[::30] = 255
    made["JPEG 9000x9000 RGB"] = folder / "big.jpg"
    cv2.imwrite(str(made["JPEG 9000x9000 RGB"]), rgb, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return made


def step(args: list[str], env=None) -> tuple[int, float, float]:
    """(exit code, peak GB, seconds) of one subprocess."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PEAK, *args], capture_output=True, text=True, env=env, check=True)
    rc, kb = out.stdout.split()
    return int(rc), int(kb) / 2**20, time.perf_counter() - start


def main() -> None:
    import os

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: the model's one-time conversion (first use on a machine) is not a step's cost
        subprocess.run([sys.executable, "-m", "specimen_id.cli", "--db", str(Path(tmp) / "warm"), "enroll",
                        "-s", "warm", str(ORDINARY)], capture_output=True, check=True)
        height, width = cv2.imread(str(ORDINARY)).shape[:2]
        files = {f"ordinary capture (PNG {width}x{height} RGB)": ORDINARY, **bombs(Path(tmp))}
        for i, (what, path) in enumerate(files.items()):
            db = Path(tmp) / "db"
            cli = [sys.executable, "-m", "specimen_id.cli", "--db", str(db)]
            name = f"s{i}"
            size = f"{path.stat().st_size / 1e6:.1f} MB"
            for label, args in (("enrol", [*cli, "enroll", "-s", name, "--allow-low-quality", str(path)]),
                                ("query", [*cli, "query", str(path)]),
                                ("3 thumbnails at once (web)", [sys.executable, "-c", THUMBNAILS, str(db), name])):
                rc, gb, seconds = step(args)
                rows.append([what, size, label, "ok" if rc == 0 else f"exit {rc}", f"{gb:.2f}", f"{seconds:.1f}"])
                print(*rows[-1], sep=" | ", flush=True)
            env = {**os.environ, "SPECIMEN_ID_MAX_DECODED_MB": "200"}  # a budget below its size
            rc, gb, seconds = step([*cli, "query", str(path)], env)
            rows.append([what, size, "query, budget 200 MB", {0: "ok", 1: "refused"}.get(rc, f"exit {rc}"),
                         f"{gb:.2f}", f"{seconds:.1f}"])
            print(*rows[-1], sep=" | ", flush=True)
    worst = max(float(r[4]) for r in rows)
    body = ("## Peak memory for decompression bombs (bench/memory.py)\n\n"
            "Each step in its own subprocess; peak RSS from `ru_maxrss` (includes the model, "
            "torch and OpenCV once loaded). The web step asks for one capture's three renditions "
            "at once through an in-process client (the first request makes them, one decode at a "
            "time). The ordinary capture is `data/specimens/he-tissue-a/capture-1.png`.\n\n"
            + table(["file", "file size", "step", "result", "peak RSS (GB)", "seconds"], rows)
            + f"\n\nWorst peak {worst:.2f} GB; target under {TARGET_GB:g} GB for any accepted file: "
            + ("reached." if worst < TARGET_GB else "NOT reached."))
    write_section("memory", body)
    print(f"worst peak {worst:.2f} GB (target < {TARGET_GB:g} GB)")


if __name__ == "__main__":
    main()

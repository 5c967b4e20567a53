"""First speed benchmark: enrolment throughput (images/s) and warm query latency (median ms)
on the sample data in data/, through the public Python API, plus the CLI's cold start.

    python bench/throughput.py [--images 96] [--repeats 20]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results import table, write_section  # noqa: E402

import specimen_id  # noqa: E402
from specimen_id.models import load_embedder  # noqa: E402
from specimen_id.simulate import Recapture  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "data"


def make_captures(folder: Path, count: int) -> list[Path]:
    """640x480 JPEG re-captures of the sample fields, as a USB microscope would save them."""
    rng = np.random.default_rng(0)
    fields = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
              for p in sorted((DATA / "specimens").glob("*/capture-1.png"))]
    paths = []
    for i in range(count):
        rgb = cv2.resize(fields[i % len(fields)], (640, 480), interpolation=cv2.INTER_AREA)
        path = folder / f"capture-{i:04d}.jpg"
        path.write_bytes(Recapture().jpeg_bytes(rgb, rng))
        paths.append(path)
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_captures(tmp, args.images)
        embedder = load_embedder()
        embedder.embed([np.zeros((480, 640, 3), np.uint8)])  # warm-up

        from specimen_id import images

        decoded = [images.load(p).pixels for p in paths]
        model_rates = []
        for _ in range(3):
            start = time.perf_counter()
            embedder.embed(decoded)
            model_rates.append(len(paths) / (time.perf_counter() - start))
        model_rate = statistics.median(model_rates)

        enrol_rates = []
        for round_ in range(3):
            with specimen_id.open_database(tmp / f"db{round_}") as db:
                start = time.perf_counter()
                jobs = [(f"specimen-{i:04d}", [p]) for i, p in enumerate(paths)]
                report = specimen_id.enroll_folders(db, jobs)
                enrol_rates.append(len(report.enrolled) / (time.perf_counter() - start))

        queries = sorted((DATA / "queries").glob("*.jpg"))
        latencies = []
        with specimen_id.open_database(tmp / "db0") as db:
            list(specimen_id.query(db, queries[:1]))  # warm
            for _ in range(args.repeats):
                for q in queries:
                    start = time.perf_counter()
                    list(specimen_id.query(db, [q]))
                    latencies.append((time.perf_counter() - start) * 1000)

        cold = []
        cli = [sys.executable, "-m", "specimen_id.cli", "--db", str(tmp / "db0"), "query", str(queries[0])]
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run(cli, check=True, capture_output=True)
            cold.append(time.perf_counter() - start)

    rows = [
        ("model only (decoded 640x480)", f"{model_rate:.1f} images/s", "preprocess + forward pass, median of 3"),
        ("enrolment end to end (640x480 JPEG)", f"{statistics.median(enrol_rates):.1f} images/s",
         f"median of 3 rounds of {args.images} files: decode, embed, store, index"),
        ("query, warm (one sample JPEG)", f"{statistics.median(latencies):.1f} ms median",
         f"p90 {np.percentile(latencies, 90):.1f} ms over {len(latencies)} queries, index of {args.images}"),
        ("CLI query, cold start", f"{statistics.median(cold):.2f} s median",
         "new process: imports, model load, one query"),
    ]
    body = "## Throughput and latency (bench/throughput.py)\n\n" + table(("what", "figure", "how"), rows)
    print(body)
    write_section("throughput", body)


if __name__ == "__main__":
    main()

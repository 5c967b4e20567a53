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
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
from results import table, write_section  # noqa: E402
from speed_common import REFERENCE, ROOT, best_batch, changed, real_fields, reference_forward, usb_jpegs  # noqa: E402
from speed_enrol import part_enrol  # noqa: E402
from speed_index import part_index  # noqa: E402
from speed_postgres import part_postgres  # noqa: E402
from speed_web import BURST, pages_during_burst, round_trips, serving  # noqa: E402
from synthetic import FittedVectors  # noqa: E402

# -- model -----------------------------------------------------------------------------------

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

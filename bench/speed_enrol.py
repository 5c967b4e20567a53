"""bench/speed.py --parts enrol: enrolment and batch identification, beside the reference
model and imagededup on the same images, in one run."""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from results import table, write_section
from speed_common import REFERENCE, best_batch, rate, real_fields, reference_forward, usb_jpegs
from tqdm import tqdm


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

"""The accuracy benchmark's data sets (bench/accuracy.py says what each is for): the real
re-capture sets of ../shared/data/real as their README describes them, and the DSB 2018 fields
grouped, split into halves and re-captured by simulation, plainly and through one microscope."""

from __future__ import annotations

import csv
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from baselines import gap_vector

from specimen_id import images, local_features, verification
from specimen_id.simulate import FixedPattern, Recapture

SEED = 2018
GROUP_INLIERS = 15  # verified pairs of originals above this are one field (impostors stay <= 8)
FIELDS = Path(__file__).with_name("fields.json")  # the groups of more than one image, by file name
LOOKALIKE_COSINE = 0.90  # plain CNN cosine to another field at which fields count as look-alike
PATTERN_SHAPE = (320, 256)  # the simulated microscope's camera (width, height)
PATTERN_FIELDS = 120  # fields of each DSB half seen through it


@dataclass
class Dataset:
    name: str
    part: str  # "real", "tune" or "test": what it may be used for
    gallery: list = field(default_factory=list)  # (specimen, path)
    queries: list = field(default_factory=list)  # {"path", "truth", "case", "overlaps"}
    lookalike: set = field(default_factory=set)  # query paths of look-alike fields (DSB)


def real_sets(root: Path) -> list[Dataset]:
    """Every set under ../shared/data/real, as its README describes them."""
    out = []
    for folder in sorted(p for p in root.iterdir() if (p / "truth.csv").exists()):
        dataset = Dataset(folder.name, "real")
        for specimen in sorted(p for p in (folder / "gallery").iterdir() if p.is_dir()):
            dataset.gallery += [(specimen.name, f) for f in images.visible_files(specimen)]
        with open(folder / "truth.csv", newline="") as f:
            for row in csv.DictReader(f):
                listed = row["detail"].split("overlaps", 1)[1] if "overlaps" in row["detail"] else ""
                overlaps = dict(re.findall(r"([^;\s:]+):([\d.]+)", listed))
                dataset.queries.append({"path": str(folder / "queries" / row["query"]),
                                        "truth": row["expected"] or None, "case": row["case"],
                                        "overlaps": {k: float(v) for k, v in overlaps.items()}})
        out.append(dataset)
    return out


def dsb_sets(data: Path, tmp: Path, embedder, regroup: bool) -> list[Dataset]:
    """The simulated sets: DSB fields re-captured (tune and test halves), and the same
    fields seen through one microscope's fixed pattern."""
    files = sorted(data.glob("*.png"))
    originals = [cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for f in files]
    if regroup or not FIELDS.exists():
        print(f"{len(files)} images; grouping fields", file=sys.stderr)
        save_fields(files, group_fields(originals, embedder.embed(originals)))
    rng = np.random.default_rng(SEED)
    groups, order = dsb_fields(files, rng)
    half = {int(g): ("tune" if k < len(order) // 2 else "test") for k, g in enumerate(order)}
    enrolled = {}
    for part in ("tune", "test"):
        members = [int(g) for g in order if half[int(g)] == part]
        cut = int(round(len(members) * 0.8))
        enrolled.update({g: k < cut for k, g in enumerate(members)})
    sim = Recapture()
    sets = {part: Dataset(f"dsb2018 simulated, {part} half", part) for part in ("tune", "test")}
    lookalike = lookalike_fields(originals, groups, enrolled, embedder)
    for i, (path, rgb) in enumerate(zip(files, originals)):
        g = int(groups[i])
        dataset = sets[half[g]]
        if enrolled[g]:
            dataset.gallery.append((f"field-{g:04d}", write(tmp / "dsb" / f"field-{g:04d}" / f"{path.stem[:12]}.jpg",
                                                             sim.jpeg_bytes(rgb, rng))))
        if i == int(np.flatnonzero(groups == g)[0]):  # one query per field
            query = write(tmp / "dsb-query" / f"{g:04d}.jpg", sim.jpeg_bytes(rgb, rng))
            dataset.queries.append({"path": str(query), "truth": f"field-{g:04d}" if enrolled[g] else None,
                                    "case": "simulated", "overlaps": {}})
            if i in lookalike:
                dataset.lookalike.add(str(query))
    microscope = FixedPattern()
    patterned = {}
    for part, dataset in sets.items():
        seen = Dataset(f"dsb2018 through one microscope, {part} half", part)
        fields_here = [q for q in dataset.queries][:PATTERN_FIELDS]
        for q in fields_here:
            g = int(Path(q["path"]).stem)
            rgb = cv2.resize(originals[int(np.flatnonzero(groups == g)[0])], PATTERN_SHAPE, interpolation=cv2.INTER_AREA)
            if q["truth"]:
                seen.gallery.append((q["truth"], write(tmp / "pattern" / q["truth"] / "1.jpg",
                                                        jpeg(microscope.apply(sim.apply(rgb, rng)), rng))))
            seen.queries.append({"path": str(write(tmp / "pattern-query" / f"{g:04d}.jpg",
                                                     jpeg(microscope.apply(sim.apply(rgb, rng)), rng))),
                                 "truth": q["truth"], "case": "fixed pattern", "overlaps": {}})
        patterned[part] = seen
    return [sets["tune"], sets["test"], patterned["tune"], patterned["test"]]


def dsb_fields(files, rng) -> tuple[np.ndarray, np.ndarray]:
    """Each file's field (numbered in order of first appearance; bench/fields.json groups the
    images of one field) and the fields in the seeded order that splits them: the first half
    tunes, the second tests."""
    groups = known_fields(files)
    labels = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    return np.array([labels[g] for g in groups]), rng.permutation(len(labels))


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def jpeg(rgb: np.ndarray, rng) -> bytes:
    quality = int(rng.integers(*Recapture().jpeg))
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def known_fields(files) -> np.ndarray:
    """Each file's group as bench/fields.json records it (a group of its own when not listed)."""
    index = {f.name: i for i, f in enumerate(files)}
    groups = np.arange(len(files))
    for names in json.loads(FIELDS.read_text())["same field"]:
        members = [index[n] for n in names if n in index]
        groups[members] = min(members, default=0)
    return groups


def save_fields(files, groups) -> None:
    same = [[files[i].name for i in np.flatnonzero(groups == g)] for g in dict.fromkeys(groups)]
    FIELDS.write_text(json.dumps({
        "found by": f"python bench/accuracy.py --regroup (>= {GROUP_INLIERS} inliers between originals)",
        "same field": [names for names in same if len(names) > 1]}, indent=1) + "\n")


def group_fields(originals, vectors) -> np.ndarray:
    """Union-find over pairs of originals that verify as the same field."""
    feats = [local_features.extract(o) for o in originals]
    parent = list(range(len(originals)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    neighbours = np.argsort(-(vectors @ vectors.T), axis=1)[:, 1:61]
    for i, row in enumerate(neighbours):
        for j in row:
            if i < j and verification.verify(feats[i], feats[j]).inliers >= GROUP_INLIERS:
                parent[find(i)] = find(int(j))
    return np.array([find(i) for i in range(len(originals))])


def lookalike_fields(originals, groups, enrolled, embedder) -> set[int]:
    """Images queried for their field that have another enrolled field the plain CNN finds
    this alike."""
    first = {int(g): int(np.flatnonzero(groups == g)[0]) for g in np.unique(groups)}
    vectors = np.array([gap_vector(embedder, originals[i]) for i in first.values()])
    rows = list(first.values())
    sims = vectors @ vectors.T
    is_enrolled = np.array([enrolled[g] for g in first])
    np.fill_diagonal(sims, -1)
    return {rows[k] for k in range(len(rows)) if sims[k][is_enrolled].max(initial=-1) >= LOOKALIKE_COSINE}

"""Enrolling captures of specimens: decode and extract features ahead in worker threads (see
pipeline.py), embed in batches, store each batch in one transaction, save the index once at
the end. A refused file never stops the batch."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from .. import images, local_features, quality
from ..errors import DuplicateContent, ImageRefused, SpecimenRemoved, UnknownSpecimen, storage_failure
from ..models import embedder_for, probe
from ..progress import progress_bar
from ..search.overlap import find_overlaps
from ..store import CaptureRecord, check_metadata
from ..text import name_problem
from .pipeline import evidence, load_measured, prepare

BATCH = 16  # captures per transaction: a kill loses at most this much work


@dataclass
class EnrolReport:
    enrolled: list = field(default_factory=list)  # paths stored as new captures
    skipped: list = field(default_factory=list)  # (path, "file"|"pixels"): already enrolled there
    refused: list = field(default_factory=list)  # ImageRefused errors, one per bad file
    overlaps: list = field(default_factory=list)  # (path, overlap found, see search/overlap.py)
    warnings: list = field(default_factory=list)  # (path, what was odd in a file that was read)


def enroll(db, specimen: str, paths, metadata: dict | None = None, **options) -> EnrolReport:
    """Enrol files as captures of one specimen (created on its first capture)."""
    return enroll_folders(db, [(specimen, list(paths))], metadata, **options)


def folder_jobs(root) -> list[tuple[str, list[Path]]]:
    """Every subfolder of root as (specimen name, its files), hidden files left out."""
    jobs = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = images.visible_files(folder)
        jobs.append((folder.name, files))
    return jobs


def enroll_folders(db, jobs, metadata: dict | None = None, *, model=None, weights=None,
                   embedder=None, allow_duplicate: bool = False, progress: bool = False,
                   allow_low_quality: bool = False) -> EnrolReport:
    """Enrol (specimen name, files) jobs under one write lock, with one progress bar. A file
    whose pixels are already enrolled under another specimen is refused unless
    allow_duplicate; one already enrolled under the same specimen is skipped; one below the
    quality limits (quality.py) is refused unless allow_low_quality."""
    if metadata is not None:
        check_metadata(metadata)  # before any file is read or kept
    report = EnrolReport()
    jobs = [(name, paths) for name, paths in jobs if _usable_name(name, paths, report)]
    if not jobs and report.refused:  # every name refused: no model to load
        return report
    embedder = embedder or embedder_for(db, model, weights)
    try:
        _enrol(db, jobs, metadata, embedder, allow_duplicate, allow_low_quality, progress, report)
    except (OSError, sqlite3.Error) as e:
        failed = storage_failure(e, getattr(e, "filename", None) or db.where)
        if failed is None:
            raise
        failed.args = (f"{failed} ({len(report.enrolled)} capture(s) of this run were committed before it "
                       "stopped; the same command finishes the rest)",)
        raise failed from None
    return report


def _enrol(db, jobs, metadata, embedder, allow_duplicate, allow_low_quality, progress, report) -> None:
    with db.writing(), progress_bar(sum(len(f) for _, f in jobs), "enrol", progress) as bar:
        db.use_model(embedder.name, embedder.weights_path, embedder.model_id)
        probe.record(db, embedder)
        items = [(name, path) for name, paths in jobs if _open_specimen(db, name, paths, metadata, report, bar)
                 for path in paths]
        known = db.enrolled_file_hashes()  # a re-run skips these without extracting features
        # one pipeline across all specimens, so that many one-file specimens overlap too
        batch, seen = [], {}

        def store():
            vectors, features = evidence(embedder, batch)
            records = [CaptureRecord.of(p.item[0], p.capture, v, f) for p, v, f in zip(batch, vectors, features)]
            ids = db.add_captures(records, embedder.model_id, local_features.FEATURE_VERSION, metadata)
            report.enrolled.extend(p.capture.name for p in batch)  # committed: counted even if what follows fails
            found = find_overlaps(db, [(cid, p.item[0], v, f) for cid, p, v, f in zip(ids, batch, vectors, features)])
            pairs = {}  # two new captures of one batch find each other: recorded once
            for f in found:
                pairs.setdefault(frozenset((f["capture_id"], f["other_id"])), f)
            db.record_overlaps(list(pairs.values()))
            paths = {cid: p.capture.name for cid, p in zip(ids, batch)}
            report.overlaps.extend((paths[f["capture_id"]], f) for f in found)
            bar.update(len(batch))
            batch.clear()

        for prepared in prepare(items, lambda item: load_measured(item[1]), embedder,
                                wanted=lambda c: c.file_sha256 not in known):
            name, capture = prepared.item[0], prepared.capture
            if capture is not None and any(p.capture.pixel_sha256 == capture.pixel_sha256 for p in batch):
                store()  # the duplicate check reads the database: it must see this run's copy
            here = seen.setdefault(name, {"file": set(), "pixels": set()})  # this run's, so far
            try:
                if prepared.error:
                    raise prepared.error
                same = _already_enrolled(db, capture, name, here, allow_duplicate)
                if not same:  # a re-run skips what is enrolled, whatever its quality
                    quality.gate(db, capture, allow_low_quality)
            except ImageRefused as e:
                report.refused.append(e)
                bar.update(1)
                continue
            if same:
                report.skipped.append((capture.name, same))
                bar.update(1)
                continue
            report.warnings.extend((capture.name, w) for w in capture.warnings)
            here["file"].add(capture.file_sha256)
            here["pixels"].add(capture.pixel_sha256)
            batch.append(prepared)
            if len(batch) == BATCH:
                store()
        if batch:
            store()


def _usable_name(name: str, paths, report) -> bool:
    """A name that cannot be a specimen's refuses its files by name; other folders go on."""
    problem = name_problem(name)
    if problem:
        report.refused += [ImageRefused(getattr(p, "name", p), problem) for p in paths]
    return problem is None


def _open_specimen(db, name, paths, metadata, report, bar) -> bool:
    """Whether files may be enrolled under this name now (updating an existing specimen's
    metadata); a removed specimen's name is reserved until purged, so its files are refused."""
    try:
        db.specimen(name)
        if metadata:
            db.ensure_specimen(name, metadata)
    except SpecimenRemoved as e:
        report.refused += [ImageRefused(path, str(e)) for path in paths]
        bar.update(len(paths))
        return False
    except UnknownSpecimen:
        pass  # created with its first capture, in the same transaction
    return True


def _already_enrolled(db, capture, name, seen, allow_duplicate) -> str | None:
    """"file" or "pixels" when this specimen already holds that content (skip it), None when it
    is new here; raises DuplicateContent when another specimen holds the same pixels."""
    for same, digest in (("file", capture.file_sha256), ("pixels", capture.pixel_sha256)):
        if digest in seen[same]:
            return same
    copies = db.find_captures(capture.file_sha256, capture.pixel_sha256)
    here = [c for c in copies if c["specimen"] == name]
    if here:
        return "file" if any(c["file_sha256"] == capture.file_sha256 for c in here) else "pixels"
    if copies and not allow_duplicate:
        raise DuplicateContent(capture.name, f"has the same pixels as capture {copies[0]['uuid']} of "
                                             f"specimen {copies[0]['specimen']!r} (use --allow-duplicate "
                                             "to enrol it here too)")
    return None

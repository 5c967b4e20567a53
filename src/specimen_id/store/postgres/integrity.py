"""`verify` and repair's part on a PostgreSQL database. The server keeps its own pages sound;
what is checked is what the directory's verify checks above its files: the schema version,
names, every capture's embedding and local features, every image against its SHA-256 (hashed
by the server), and the vector index against the setting `index`. Images no row refers to are
notices; repair deletes them once they are a minute old (a query stores its image just before
its row)."""

from __future__ import annotations

from ..integrity import LEFTOVER_MIN_AGE_S, Report, _check_names, _check_vectors, _who, check_images
from .schema import MIGRATIONS, schema_version
from .vectors import MISHIDDEN


def verify(store, feature_version: str) -> Report:
    report = Report()
    with store.db.atomic():  # one snapshot, whoever writes meanwhile
        version = schema_version(store.db)
        if version != len(MIGRATIONS):
            report.add("schema", f"schema version {version}, this specimen-id expects {len(MIGRATIONS)}")
        _check_names(store.db, report)
        captures = _check_vectors(store, report, feature_version)
        digests = store.blobs.digests()
        referenced = check_images(store, report, captures, digests.get, lambda key: f"image {key}")
        old = {r[0] for r in store.db.execute(
            f"SELECT key FROM blobs WHERE created_at < now() - interval '{LEFTOVER_MIN_AGE_S} seconds'")}
        for key in sorted(set(digests) - referenced):
            report.add("orphan", f"image {key}: no capture or query refers to it", problem=False,
                       key=key if key in old else None)
        for cid, hidden in store.db.execute(MISHIDDEN).fetchall():
            state = "left out of searches, its specimen not removed" if hidden else "searched, its specimen removed"
            report.add("index", f"{_who(captures.get(cid), cid)}: its vector is {state}; `repair` puts that right")
        wanted = store.vectors.planned()
        if not store.vectors.in_place(wanted):
            report.add("index", f"the vector index is {store.vectors.describe()}, the setting `index` asks for "
                                f"{'no index' if wanted is None else ' over '.join(wanted)} for model "
                                f"{store.model_id}; `repair` builds it", problem=False)
    return report


def clean(store, found: Report, rgb8) -> tuple[list[str], list[str]]:
    """Images no row refers to deleted (those over a minute old); the index was rebuilt by
    repair (vectors.sync). Local copies and renditions are the station's cache: made again
    when used."""
    fixed, young = [], 0
    for f in found.findings:
        if f.kind != "orphan":
            continue
        key = f.key
        if key is None:
            young += 1
            continue
        with store.writing():
            used = store.db.execute("SELECT 1 FROM captures WHERE image_key = ? UNION ALL "
                                    "SELECT 1 FROM queries WHERE image_key = ?", [key, key]).fetchone()
            if used is None and store.blobs.delete(key):
                fixed.append(f"removed image {key}")
    unfixable = [f"kept {young} unreferenced image(s) younger than {LEFTOVER_MIN_AGE_S} s (a running query "
                 "may be about to refer to them); run repair again later"] if young else []
    return fixed, unfixable

"""Numbered schema migrations: SQL scripts, each run once, in order, in one transaction with the
bump of `PRAGMA user_version`, so a database is always at exactly one known version.
Never edit a released migration: add the next one."""

from __future__ import annotations

from ..errors import DatabaseUnusable

# SQL for a model_id column or setting without the feature recipe it used to carry (migration 7)
_WITHOUT_SIFT = "replace(replace(replace(replace({0}, '+sift-1', ''), '+sift-2', ''), '+sift-3', ''), '+sift-4', '')"

MIGRATIONS = [
    # 1: the first schema
    """
    CREATE TABLE specimens (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        uuid TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL UNIQUE,
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL
    );
    -- AUTOINCREMENT: capture ids are FAISS ids and must never be reused after a removal.
    CREATE TABLE captures (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        uuid TEXT NOT NULL UNIQUE,
        specimen_id INTEGER NOT NULL REFERENCES specimens(id),
        file_sha256 TEXT NOT NULL,
        pixel_sha256 TEXT NOT NULL,
        image_path TEXT NOT NULL,
        original_name TEXT,
        format TEXT, width INTEGER, height INTEGER, dtype TEXT, channels INTEGER,
        exif TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL
    );
    CREATE INDEX captures_specimen ON captures(specimen_id);
    CREATE INDEX captures_file ON captures(file_sha256);
    CREATE INDEX captures_pixels ON captures(pixel_sha256);
    CREATE TABLE embeddings (
        capture_id INTEGER NOT NULL REFERENCES captures(id) ON DELETE CASCADE,
        model_id TEXT NOT NULL,
        vector BLOB NOT NULL,
        PRIMARY KEY (capture_id, model_id)
    );
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE queries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        uuid TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        query_name TEXT NOT NULL,
        file_sha256 TEXT,
        model_id TEXT NOT NULL,
        threshold REAL NOT NULL,
        decision TEXT NOT NULL,
        specimen_id INTEGER REFERENCES specimens(id) ON DELETE SET NULL,
        score REAL,
        candidates TEXT NOT NULL,
        software_version TEXT NOT NULL
    );
    """,
    # 2: queries keep their pixels' hash and a managed copy of the image, so a past query can be
    # shown again and added to its specimen as a reference; score_kind says what its threshold
    # was a threshold on.
    """
    ALTER TABLE queries ADD COLUMN pixel_sha256 TEXT;
    ALTER TABLE queries ADD COLUMN image_path TEXT;
    ALTER TABLE queries ADD COLUMN score_kind TEXT NOT NULL DEFAULT 'cosine';
    ALTER TABLE queries ADD COLUMN top_k INTEGER;
    CREATE INDEX queries_created ON queries(created_at);
    """,
    # 3: SIFT keypoints per capture for spatial verification (derived from the managed image,
    # so `reindex` can always recompute them); `version` names the extraction recipe.
    """
    CREATE TABLE local_features (
        capture_id INTEGER PRIMARY KEY REFERENCES captures(id) ON DELETE CASCADE,
        version TEXT NOT NULL,
        data BLOB NOT NULL
    );
    """,
    # 4: a person's verdict on a logged decision (for calibration), and free notes on specimens
    """
    CREATE TABLE reviews (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        query_id INTEGER NOT NULL REFERENCES queries(id) ON DELETE CASCADE,
        verdict TEXT NOT NULL CHECK (verdict IN ('confirmed', 'rejected')),
        reviewer TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL
    );
    CREATE INDEX reviews_query ON reviews(query_id);
    ALTER TABLE specimens ADD COLUMN notes TEXT NOT NULL DEFAULT '';
    """,
    # 5: an append-only audit trail of every change (who, where, when, what: before/after), and
    # soft delete: a removed specimen keeps its rows and images until it is purged.
    """
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        user TEXT NOT NULL,
        station TEXT NOT NULL,
        client TEXT,
        action TEXT NOT NULL,
        specimen_uuid TEXT,
        specimen_name TEXT,
        capture_uuid TEXT,
        changes TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_specimen ON audit(specimen_uuid);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
    ALTER TABLE specimens ADD COLUMN removed_at TEXT;
    """,
    # 6: from the microscope itself: each capture's and query's quality measures (focus,
    # clipping, size), how a capture was taken (device, controls locked, frames averaged), and
    # the content a watched folder has handled, so a restarted `watch` never handles it twice.
    """
    ALTER TABLE captures ADD COLUMN quality TEXT;
    ALTER TABLE captures ADD COLUMN acquisition TEXT;
    ALTER TABLE queries ADD COLUMN quality TEXT;
    CREATE TABLE watched (
        file_sha256 TEXT NOT NULL,
        action TEXT NOT NULL,  -- "query" or "enrol:<specimen>": content is handled once per action
        name TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        handled_at TEXT NOT NULL,
        PRIMARY KEY (file_sha256, action)
    );
    """,
    # 7: the local features' recipe is versioned on its own (setting `features_version`), no
    # longer inside model_ids, so a new feature recipe recomputes features, not CNN vectors.
    # Every model_id ever stored loses its "+sift-N" (the recipes released inside model_ids).
    f"""
    UPDATE OR IGNORE embeddings SET model_id = {_WITHOUT_SIFT.format("model_id")};
    DELETE FROM embeddings WHERE model_id LIKE '%+sift-%';  -- a duplicate once renamed
    UPDATE queries SET model_id = {_WITHOUT_SIFT.format("model_id")};
    UPDATE settings SET value = {_WITHOUT_SIFT.format("value")} WHERE key = 'model_id';
    UPDATE settings SET value = json_set(value, '$.model_id',
                                         {_WITHOUT_SIFT.format("json_extract(value, '$.model_id')")})
        WHERE key = 'threshold' AND json_type(value, '$.model_id') = 'text';
    INSERT OR IGNORE INTO settings(key, value)
        SELECT 'features_version', json_quote(version) FROM local_features
        GROUP BY version ORDER BY COUNT(*) DESC LIMIT 1;
    """,
    # 8: where a capture overlaps another specimen's field (a neighbouring tile of one slide),
    # found when the later one is enrolled; the share of each field inside the other.
    """
    CREATE TABLE overlaps (
        capture_id INTEGER NOT NULL REFERENCES captures(id) ON DELETE CASCADE,
        other_id INTEGER NOT NULL REFERENCES captures(id) ON DELETE CASCADE,
        share_of_capture REAL NOT NULL,
        share_of_other REAL NOT NULL,
        found_at TEXT NOT NULL,
        PRIMARY KEY (capture_id, other_id)
    );
    CREATE INDEX overlaps_other ON overlaps(other_id);
    """,
    # 9: the quality gate measures focus by edge width and blur, and over-exposure on the
    # specimen only: limits set for the measures it no longer takes do not carry over.
    """
    DELETE FROM settings WHERE key IN ('min_focus', 'max_bright_clipped');
    """,
    # 10: a review names what the query shows: one specimen ('specimen', with its id) or none
    # of those offered ('none'). The verdicts before it ('confirmed', 'rejected') name no
    # specimen and are kept as they are. Every review stays (the latest one counts). A query
    # keeps the warnings and the margin it was answered with, to show it again as it was.
    """
    CREATE TABLE reviews_10 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        query_id INTEGER NOT NULL REFERENCES queries(id) ON DELETE CASCADE,
        verdict TEXT NOT NULL CHECK (verdict IN ('confirmed', 'rejected', 'specimen', 'none')),
        specimen_id INTEGER REFERENCES specimens(id) ON DELETE SET NULL,
        reviewer TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL
    );
    INSERT INTO reviews_10 (id, query_id, verdict, reviewer, note, created_at)
        SELECT id, query_id, verdict, reviewer, note, created_at FROM reviews;
    DROP TABLE reviews;
    ALTER TABLE reviews_10 RENAME TO reviews;
    CREATE INDEX reviews_query ON reviews(query_id);
    CREATE INDEX reviews_specimen ON reviews(specimen_id);
    ALTER TABLE queries ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE queries ADD COLUMN margin REAL;
    """,
    # 11: a review given by "this one" keeps the candidate's capture: after a move the capture's
    # specimen is another than the one the logged query names, and calibration pairs by capture.
    """
    ALTER TABLE reviews ADD COLUMN capture_uuid TEXT;
    """,
    # 12: rows hold an image's key (its content, <sha256>.<ext>), not where the directory keeps
    # it (images/ab/<key>), so another backend can keep the same rows. A value that was no
    # managed path stays as it was, and is refused as a key.
    """
    ALTER TABLE captures RENAME COLUMN image_path TO image_key;
    ALTER TABLE queries RENAME COLUMN image_path TO image_key;
    UPDATE captures SET image_key = substr(image_key, 11) WHERE image_key GLOB 'images/[0-9a-f][0-9a-f]/*';
    UPDATE queries SET image_key = substr(image_key, 11) WHERE image_key GLOB 'images/[0-9a-f][0-9a-f]/*';
    """,
]


def schema_version(conn) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn, upto: int | None = None) -> int:
    """Bring the database to the latest (or `upto`) version; returns the version reached."""
    target = len(MIGRATIONS) if upto is None else upto
    version = schema_version(conn)
    if version > len(MIGRATIONS):
        raise DatabaseUnusable(f"database schema version {version} is newer than this "
                               f"specimen-id understands ({len(MIGRATIONS)}); upgrade specimen-id")
    for number in range(version, target):
        # executescript commits before it runs, so the transaction lives inside the script.
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{MIGRATIONS[number]}\n"
                               f"PRAGMA user_version = {number + 1};\nCOMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return max(version, target)

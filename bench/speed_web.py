"""The web app's figures for bench/speed.py's query part (issue 19), measured through a real
uvicorn server on loopback with real HTTP clients, on the database the CLI's figures use:
- pages while queries run: `GET /` timed while 12 clients post queries at once;
- query submit to result: the query page posted (upload, answer, the redirect to the result's
  page followed and that page rendered);
- a warm web query beside the CLI's warm query, on the same database.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

BURST = 12


@contextmanager
def serving(db: Path):
    """A uvicorn server of the browse app on a free loopback port, model loaded: its base URL."""
    import uvicorn

    from specimen_id.web import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(db)
    app.state.service.embedder()  # as `specimen-id browse` does before serving
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _post_alone(base: str, url: str, path: Path):
    import httpx

    with httpx.Client(base_url=base, timeout=600) as client:
        return _post(client, url, path)


def _post(client, url: str, path: Path):
    # the query page answers with a redirect to the result's own page: followed, as a browser does
    response = client.post(url, files={"file": (path.name, path.read_bytes(), "image/jpeg")},
                           headers={"Origin": str(client.base_url).rstrip("/")}, follow_redirects=True)
    response.raise_for_status()
    return response


def pages_during_burst(base: str, queries: list[Path]) -> dict:
    """GET / timed (ms) while BURST clients post queries at once, and the same page alone."""
    import httpx

    with httpx.Client(base_url=base, timeout=600) as client:
        client.get("/")
        alone = []
        for _ in range(10):
            t = time.perf_counter()
            client.get("/").raise_for_status()
            alone.append((time.perf_counter() - t) * 1000)
        busy = []
        with ThreadPoolExecutor(BURST) as pool:
            burst = [pool.submit(_post_alone, base, "/api/query", queries[i % len(queries)]) for i in range(BURST)]
            while not all(f.done() for f in burst):
                t = time.perf_counter()
                client.get("/").raise_for_status()
                busy.append((time.perf_counter() - t) * 1000)
            for f in burst:
                f.result()
    return {"alone": statistics.median(alone), "busy": statistics.median(busy), "busy_max": max(busy),
            "pages": len(busy)}


def round_trips(base: str, queries: list[Path], url: str) -> list[float]:
    """Milliseconds from posting each query (to the page or the API) to its answer, one at a time."""
    import httpx

    with httpx.Client(base_url=base, timeout=600) as client:
        _post(client, url, queries[0])  # warm
        times = []
        for path in queries:
            t = time.perf_counter()
            _post(client, url, path)
            times.append((time.perf_counter() - t) * 1000)
    return times

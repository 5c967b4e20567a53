"""One identification service per process (service.py): the web app keeps serving pages while
queries and lock waits run, reads its index once, and shares one embedder across threads."""

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from conftest import QUERIES, SPECIMENS, serving
from fastapi.testclient import TestClient
from filelock import FileLock

from specimen_id import images
from specimen_id.store import Database
from specimen_id.web import create_app

RECAPTURES = sorted(QUERIES.glob("recapture-*.jpg"))


def _upload(path):
    return {"file": (path.name, path.read_bytes(), "image/jpeg")}


def test_pages_are_served_while_a_burst_of_queries_runs(enrolled):
    app = create_app(enrolled.db, workers=2)
    app.state.service.embedder()  # loaded, as `browse` does before it serves

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=120) as client:
            queries = [asyncio.create_task(client.post("/api/query", files=_upload(path)))
                       for path in RECAPTURES * 2]
            served = []  # queries answered when each page came back
            while not all(q.done() for q in queries):
                page = await client.get("/")
                assert page.status_code == 200 and "fluo-nuclei-a" in page.text
                served.append(sum(q.done() for q in queries))
            return served, [(await q).json() for q in queries]

    served, answers = asyncio.run(burst())
    # the first page came back before any of the 12 queries had finished, and pages kept coming
    assert served[0] == 0 and len(served) >= 3, served
    expected = [path.stem.removeprefix("recapture-") for path in RECAPTURES * 2]
    assert [a["specimen"] for a in answers] == expected


def test_pages_are_served_while_an_enrolment_waits_for_the_write_lock(enrolled, monkeypatch):
    monkeypatch.setenv("SPECIMEN_ID_LOCK_TIMEOUT", "60")
    app = create_app(enrolled.db)
    client = TestClient(app, base_url="http://127.0.0.1")
    held = FileLock(str(enrolled.db / "write.lock"))  # another writer, busy
    held.acquire()
    try:
        with ThreadPoolExecutor(1) as pool:
            enrolment = pool.submit(client.post, "/api/enrol", data={"specimen": "late"},
                                    files={"files": ("a.jpg", RECAPTURES[0].read_bytes(), "image/jpeg")},
                                    headers={"Origin": "http://127.0.0.1"})
            for _ in range(3):
                assert client.get("/").status_code == 200
                assert client.get("/history").status_code == 200
            assert not enrolment.done()  # still waiting for the lock, and the pages came
            held.release()
            assert enrolment.result(120).json()["enrolled"] == 1
    finally:
        if held.is_locked:
            held.release()
    assert "late" in client.get("/").text


def test_the_index_is_read_once_and_again_only_when_the_database_changes(enrolled):
    app = create_app(enrolled.db)
    client = TestClient(app, base_url="http://127.0.0.1")
    service = app.state.service

    def ask(path):
        response = client.post("/api/query", files=_upload(path))
        assert response.status_code == 200, response.text
        return response.json()

    assert ask(RECAPTURES[0])["decision"] == "match"
    loaded = service.database().vectors.loaded()
    for path in RECAPTURES[1:3]:
        assert ask(path)["decision"] == "match"
    assert service.database().vectors.loaded() is loaded  # the same object: not read again
    # another process (here the CLI) enrols: the next query reads the new index, once
    assert enrolled("enroll", "-s", "never-before", QUERIES / "never-enrolled-1.jpg").exit_code == 0
    assert ask(QUERIES / "never-enrolled-1.jpg")["specimen"] == "never-before"
    refreshed = service.database().vectors.loaded()
    assert refreshed is not loaded and len(refreshed) == len(loaded) + 1
    assert ask(RECAPTURES[0])["specimen"] == RECAPTURES[0].stem.removeprefix("recapture-")
    assert service.database().vectors.loaded() is refreshed


def test_one_embedder_serves_many_threads(enrolled):
    app = create_app(enrolled.db)
    embedder = app.state.service.embedder()
    pixels = [images.load(path).pixels for path in sorted(SPECIMENS.glob("*/*"))[:6]]
    alone = embedder.embed(pixels)
    with ThreadPoolExecutor(6) as pool:  # an inference request per thread: never "busy"
        together = list(pool.map(lambda i: embedder.embed([pixels[i % 6]])[0], range(24)))
    assert np.allclose(np.stack(together), np.concatenate([alone] * 4), atol=1e-5)


def test_the_specimens_list_is_one_query(enrolled):
    with Database(enrolled.db) as db:
        statements = []
        db.db.conn.set_trace_callback(statements.append)
        specimens = db.specimens()
        db.db.conn.set_trace_callback(None)
        assert len([s for s in statements if s.startswith("SELECT")]) == 1
        for specimen in specimens:
            captures = db.captures(specimen["id"])
            assert specimen["captures"] == len(captures) and specimen["cover"] == captures[0]["uuid"]


def test_a_long_download_is_not_cut_by_the_body_time_limit():
    """The limit is on the request's body: a response that takes longer than it (a big
    original image to a slow client) arrives whole."""
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from specimen_id.web.safety import BodyLimit

    async def slow(request):
        async def parts():
            for _ in range(6):
                await asyncio.sleep(0.4)
                yield b"x" * 1000
        return StreamingResponse(parts())

    with serving(BodyLimit(Starlette(routes=[Route("/slow", slow)]), max_bytes=1000, timeout=1.0,
                            deadline=2.0)) as port:
        reply = httpx.get(f"http://127.0.0.1:{port}/slow", timeout=30)
    assert reply.status_code == 200 and len(reply.content) == 6000


def test_a_body_that_stops_arriving_is_cut_off(enrolled):
    """A slow client holds no worker: the body's next part must come within the time limit."""
    with serving(create_app(enrolled.db, body_timeout=1.0)) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
            slow.sendall(b"POST /api/query HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                         b"Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n")
            reply = b""  # (the socket's own 30 s would raise instead)
            while b"came too slowly" not in reply and (part := slow.recv(4096)):
                reply += part
            reply = reply.decode()
        assert reply.startswith("HTTP/1.1 408") and "came too slowly" in reply, reply
        # and the server still answers others
        assert httpx.get(f"http://127.0.0.1:{port}/api/specimens").status_code == 200


def test_a_bad_worker_count_is_one_line(enrolled, monkeypatch):
    monkeypatch.setenv("SPECIMEN_ID_WORKERS", "0")
    result = enrolled("browse")
    assert result.exit_code != 0 and "SPECIMEN_ID_WORKERS='0'" in result.output
    assert "Traceback" not in result.output


def test_a_page_change_while_another_writer_holds_on_is_503_not_a_form_error(enrolled, monkeypatch):
    monkeypatch.setenv("SPECIMEN_ID_LOCK_TIMEOUT", "0.5")
    client = TestClient(create_app(enrolled.db), base_url="http://127.0.0.1")
    held = FileLock(str(enrolled.db / "write.lock"))
    with held:
        reply = client.post("/specimens/he-tissue-a/rename", data={"new_name": "x"},
                            headers={"Origin": "http://127.0.0.1"})
    assert reply.status_code == 503 and "being written by another process" in reply.text
    assert client.get("/api/specimens/he-tissue-a").status_code == 200  # nothing changed


def test_many_files_answered_as_a_pipeline_give_what_each_file_alone_gives(enrolled, tmp_path):
    """`query FILE...` prepares files ahead in workers and embeds, searches and logs them in
    batches: the answers, in order, are those of each file answered on its own (decisions and
    ranks alike, scores within 1e-6), a refused file among them is refused in its place, and
    every answer is logged as it was given."""
    from specimen_id.models import embedder_for
    from specimen_id.search.query import BATCH, answer, query

    (tmp_path / "not-an-image.png").write_bytes(b"hello")
    queries = sorted(QUERIES.glob("*.jpg"))
    files = [*queries, tmp_path / "not-an-image.png", *queries]  # more than a batch
    assert len(files) > BATCH

    def ranks(result):
        return result["decision"], result.get("specimen"), [c["capture"] for c in result.get("candidates", [])]

    def scores(result):
        return [result.get("score") or 0.0, *(c["score"] for c in result.get("candidates", []))]

    with Database(enrolled.db) as db:
        together = list(query(db, files))
        embedder = embedder_for(db)
        alone = [answer(db, images.load(f), embedder, log=False) if f.suffix == ".jpg" else None for f in files]
        logged = {r["query_id"]: db.logged_query(r["query_id"]) for r in together if "query_id" in r}
    assert [r["query"] for r in together] == [str(f) for f in files]
    refused = files.index(tmp_path / "not-an-image.png")
    assert together[refused]["decision"] == "refused" and "not-an-image.png" in together[refused]["error"]
    pairs = [(r, a) for r, a in zip(together, alone) if a]
    assert [ranks(r) for r, _ in pairs] == [ranks(a) for _, a in pairs]
    for r, a in pairs:
        assert np.allclose(scores(r), scores(a), rtol=0, atol=1e-6), (r["query"], scores(r), scores(a))
    assert sum(r["decision"] == "match" for r in together) >= 5
    assert len(logged) == len(pairs)  # one row each, as answered
    assert all(logged[r["query_id"]]["decision"] == r["decision"] for r, _ in pairs)


def test_files_listed_before_a_listing_fails_are_answered_first(enrolled):
    """A list of files that fails part way (a folder that went away): the files listed before
    it are answered, then the failure is raised."""
    from specimen_id.search.query import query

    def listing():
        yield from sorted(QUERIES.glob("*.jpg"))[:3]
        raise OSError("the folder went away")

    answered = []
    with Database(enrolled.db) as db:
        try:
            for result in query(db, listing(), log=False):
                answered.append(result)
        except OSError as e:
            failure = str(e)
    assert failure == "the folder went away"
    assert [r["query"] for r in answered] == [str(f) for f in sorted(QUERIES.glob("*.jpg"))[:3]]
    assert all(r["decision"] in ("match", "no_match", "ambiguous") for r in answered)

"""The browse app: specimens, one specimen, query by upload, history, past results; each page
has a JSON twin under /api. It answers through the process's identification service
(service.py): a store per thread sharing one loaded index, the model loaded once, and queries
and enrolments run in the service's pool, so pages keep coming while they run."""

from __future__ import annotations

import ipaddress
import sqlite3
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import images
from ..config import setting
from ..errors import DatabaseUnusable, ImageRefused, LowQuality, SpecimenIdError, UnknownSpecimen, storage_failure
from ..service import Service
from ..store import CLIENT, backend_for, redacted
from ..text import name_problem, one_line
from .curate import curation
from .pages import done, for_the_page, is_api, needs_review, page, parse_metadata, specimen_names
from .safety import AllowedHosts, BodyLimit, SameOrigin, TokenRequired, machine_hosts

MAX_UPLOAD_BYTES = 50_000_000
FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="8" cy="8" r="7" '
           'fill="#243447"/><circle cx="6" cy="7" r="2" fill="#9cd"/><circle cx="10.5" cy="9.5" r="1.5" '
           'fill="#9cd"/></svg>')
BODY_TIMEOUT_S = 30.0  # longest wait for the next part of a request body (safety.BodyLimit)
MATCH_LINES = 60  # most matched pairs drawn between a query and a candidate
BODY_DEADLINE_S = 600.0  # longest a whole request body may take (50 MB at 85 kB/s)


def upload_name(upload: UploadFile) -> str:
    """The uploaded file's own name (no folders), refused with a 400 when no file system could
    hold it; an unnamed upload is called `upload`."""
    name = Path(upload.filename or "").name
    if "\0" in name or len(name.encode("utf-8", "surrogatepass")) > 255:
        shown = one_line(name[:60]) + ("..." if len(name) > 60 else "")
        raise HTTPException(400, f"the file name '{shown}' is not usable (over 255 bytes, or "
                                 "holds a NUL); rename the file and upload it again")
    return name if name not in ("", ".", "..") else "upload"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class RecordClient:
    """Tags each request's changes in the audit trail with the client's address (the server's
    OS user is recorded as the user: the app has no logins)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = scope.get("client")
        token = CLIENT.set(f"web {client[0]}" if client else "web")
        try:
            await self.app(scope, receive, send)
        finally:
            CLIENT.reset(token)


def create_app(db_path, host: str = "127.0.0.1", token: str | None = None,
               max_upload: int = MAX_UPLOAD_BYTES, allowed_hosts: list[str] | None = None,
               body_timeout: float = BODY_TIMEOUT_S, workers: int | None = None) -> FastAPI:
    """The app for one database directory. Off loopback a token is required (ValueError), and
    the Host header must name one of allowed_hosts (default: this machine's names and
    addresses)."""
    if not is_loopback(host) and not token:
        raise ValueError(f"serving on {host} needs a token (--token or SPECIMEN_ID_TOKEN)")
    backend_for(db_path)  # a URL no backend serves is refused before the app starts
    service = Service(db_path, workers=workers)

    @asynccontextmanager
    async def lifespan(app):
        yield
        service.close()  # the server stops: its workers finish what they hold, then end

    app = FastAPI(title="specimen-id", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.service = service
    database = service.database

    @app.exception_handler(SpecimenIdError)
    async def domain_error(request: Request, error: SpecimenIdError):
        status = (404 if isinstance(error, UnknownSpecimen) else 507 if getattr(error, "full", False)
                  else 503 if isinstance(error, DatabaseUnusable) else 400)
        if is_api(request):
            return JSONResponse({"error": str(error)}, status_code=status)
        return page(request, "error.html", status, message=str(error))

    @app.exception_handler(OSError)
    @app.exception_handler(sqlite3.Error)
    async def storage_error(request: Request, error: Exception):
        """A full or read-only disk: 507 or 503 with the reason, never a bare 500."""
        failed = storage_failure(error, redacted(str(db_path)))
        if failed is None:
            raise error
        return await domain_error(request, failed)

    @app.exception_handler(RequestValidationError)
    async def bad_form(request: Request, error: RequestValidationError):
        fields = ", ".join(str(e["loc"][-1]) for e in error.errors())
        message = f"missing or invalid: {fields}"
        if is_api(request):
            return JSONResponse({"error": message}, status_code=422)
        return page(request, "error.html", 422, message=message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        if is_api(request):
            return JSONResponse({"error": error.detail}, status_code=error.status_code)
        return page(request, "error.html", error.status_code, message=error.detail)

    def specimens_data(q: str) -> list[dict]:
        found = []
        for specimen in database().specimens():  # one query, covers and counts included
            text = (specimen["name"] + " " + " ".join(f"{k} {v}" for k, v in specimen["metadata"].items())).lower()
            if q.lower() in text:
                found.append({key: specimen[key] for key in ("name", "uuid", "metadata", "captures", "cover")})
        return found

    @app.get("/", response_class=HTMLResponse)
    @app.get("/api/specimens")
    def specimens(request: Request, q: str = ""):
        found = specimens_data(q)
        if is_api(request):
            return found
        # a specimen whose captures were all moved away is listed apart, to be removed
        return page(request, "specimens.html", specimens=[s for s in found if s["captures"]],
                    empty=[s for s in found if not s["captures"]], removed=database().removed_specimens(), q=q)

    app.include_router(curation(service))

    def managed_image(kind: str, uuid_: str) -> str:
        """The blob key of a capture's or query's image (404 when there is none)."""
        if kind not in ("capture", "query"):
            raise HTTPException(404)
        try:
            key = database().image_key(kind, uuid_)
        except KeyError:
            raise HTTPException(404) from None
        if not database().blobs.file(key).is_file():
            raise HTTPException(404, f"the image file of {kind} {uuid_} is missing; run `specimen-id verify`")
        return key

    @app.get("/images/{kind}/{uuid_}")
    def image(kind: str, uuid_: str, size: int = Query(0, ge=0)):
        """A capture's or query's image as a JPEG rendition: the page view, or with size > 0
        the smallest thumbnail at least that large (renditions.SIZES)."""
        path = database().blobs.rendition(managed_image(kind, uuid_), size, images.rgb8)
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/images/{kind}/{uuid_}/original")
    def original(kind: str, uuid_: str):
        """The stored file itself, byte for byte, to download (never decoded here)."""
        path = database().blobs.file(managed_image(kind, uuid_))
        return FileResponse(path, filename=f"{uuid_}{path.suffix}")

    async def run_query(upload: UploadFile, threshold: float | None) -> dict:
        data, name = await upload.read(), upload_name(upload)
        # decoding, embedding and verifying are CPU work: the pool's, not the event loop's
        return await service.run(lambda: service.identify(images.decode(data, name), threshold=threshold))

    @app.get("/query", response_class=HTMLResponse)
    def query_form(request: Request):
        return page(request, "query.html", result=None)

    @app.post("/query", response_class=HTMLResponse)
    async def query_page(request: Request, file: UploadFile):
        try:
            result = await run_query(file, None)
        except ImageRefused as e:
            return page(request, "query.html", 400, result=None, error=str(e))
        # post/redirect/get: reloading the result shows it again, it does not ask again
        return RedirectResponse(f"/queries/{result['query_id']}", status_code=303)

    @app.post("/api/query")
    async def query_api(file: UploadFile, threshold: float | None = Query(None, ge=0, le=1)):
        return await run_query(file, threshold)

    @app.get("/history", response_class=HTMLResponse)
    @app.get("/api/history")
    def history(request: Request, limit: int = Query(500, ge=1, le=100_000)):
        queries = database().queries(limit)
        if is_api(request):
            return queries
        # ambiguous decisions nobody has reviewed yet come first: they need a person
        return page(request, "history.html", queries=queries, pending=[q for q in queries if needs_review(q)])

    def logged(uuid_: str) -> dict:
        try:
            return database().logged_query(uuid_)
        except KeyError:
            raise HTTPException(404, "no such query") from None

    def redecided(row: dict, threshold: float) -> dict:
        """The server's one rule (score.decide) over a logged query's candidates, with the
        margin it was answered with (today's for queries logged before it was kept)."""
        from ..search.score import decide

        margin = row["margin"] if row.get("margin") is not None else float(setting(database(), "margin"))
        decided = decide(row["candidates"], threshold, margin)
        return {**decided, "margin": margin, "threshold": threshold,
                "clearing": [i for i, c in enumerate(row["candidates"]) if c["score"] >= threshold]}

    @app.get("/queries/{uuid_}", response_class=HTMLResponse)
    @app.get("/api/queries/{uuid_}")
    def past_query(request: Request, uuid_: str):
        row = logged(uuid_)
        # the contenders and overlaps it was answered with, by the rule that answered it
        again = redecided(row, row["threshold"])
        result = {"query": row["query_name"], "decision": row["decision"], "specimen": row["specimen"],
                  "score": row["score"], "threshold": row["threshold"], "candidates": row["candidates"],
                  "score_kind": row["score_kind"], "query_id": row["uuid"], "created_at": row["created_at"],
                  "review": row["review"], "warnings": row.get("warnings") or [],
                  "exact": [{"specimen": c["specimen"], "capture": c["uuid"],
                             "same": "file" if c["file_sha256"] == row["file_sha256"] else "pixels"}
                            for c in database().find_captures(row["file_sha256"], row["pixel_sha256"])],
                  "margin": again["margin"], "overlaps": again["overlaps"],
                  **({"contenders": again["contenders"], "lead": again["lead"]}
                     if row["decision"] == "ambiguous" and "contenders" in again else {})}
        if is_api(request):
            return result
        pending = [q["uuid"] for q in database().queries(500) if needs_review(q) and q["uuid"] != uuid_]
        return page(request, "query.html", result=result, reviews=database().reviews_of(uuid_),
                    next_pending=pending[0] if pending else None)

    @app.get("/api/queries/{uuid_}/decide")
    def decide_again(uuid_: str, threshold: float = Query(ge=0, le=1)):
        """What the decision would be at another threshold (nothing is stored)."""
        return redecided(logged(uuid_), threshold)

    @app.get("/favicon.svg")
    @app.get("/favicon.ico")
    def favicon():
        return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/matches/{query_uuid}/{capture_uuid}")
    async def matches(query_uuid: str, capture_uuid: str):
        # a verification run again: CPU work, for the service's pool
        return await service.run(draw_matches, query_uuid, capture_uuid)

    def draw_matches(query_uuid: str, capture_uuid: str):
        """The query and a candidate side by side, matched keypoints joined by lines: the
        verification run again on the page renditions, so this page never decodes a whole
        capture (for 8-bit captures that is what the decision saw, up to JPEG rounding; for
        16-bit or float ones, their 8-bit display)."""
        import cv2

        from .. import local_features, verification

        tiles = [cv2.imread(str(database().blobs.rendition(managed_image(kind, uuid_), 0, images.rgb8)))
                 for kind, uuid_ in (("query", query_uuid), ("capture", capture_uuid))]
        check = verification.verify(*(local_features.extract(cv2.cvtColor(t, cv2.COLOR_BGR2RGB)) for t in tiles))
        for i, t in enumerate(tiles):  # both at the verification's working size, so the points land right
            scale = local_features.WORK_SIZE / max(t.shape[:2])
            tiles[i] = cv2.resize(t, (round(t.shape[1] * scale), round(t.shape[0] * scale)))
        height = max(t.shape[0] for t in tiles)
        canvas = np.zeros((height, tiles[0].shape[1] + tiles[1].shape[1], 3), np.uint8)
        canvas[:tiles[0].shape[0], :tiles[0].shape[1]] = tiles[0]
        canvas[:tiles[1].shape[0], tiles[0].shape[1]:] = tiles[1]
        # thinned: a few dozen lines show the agreement; hundreds hide the pictures
        for (qx, qy), (cx, cy) in check.pairs[::max(1, -(-len(check.pairs) // MATCH_LINES))]:
            cv2.line(canvas, (int(qx), int(qy)), (int(cx) + tiles[0].shape[1], int(cy)), (0, 255, 0), 1)
        return Response(cv2.imencode(".png", canvas)[1].tobytes(), media_type="image/png")

    # -- enrol and curate: each form posts, then redirects to the page that shows the result;
    # each has an /api twin answering JSON.

    @app.get("/enrol", response_class=HTMLResponse)
    def enrol_form(request: Request):
        return page(request, "enrol.html", report=None, names=specimen_names(database()))

    @app.post("/enrol")
    @app.post("/api/enrol")
    async def enrol(request: Request, specimen: str = Form(), files: list[UploadFile] = (),
                    metadata: str = Form(""), allow_low_quality: bool = Form(False)):
        import tempfile

        name = specimen.strip()
        typed = {"specimen": specimen, "metadata": metadata, "allow_low_quality": allow_low_quality}

        def refused(message: str):  # the form again, as it was typed, with the reason
            if is_api(request):
                raise HTTPException(400, message)
            return page(request, "enrol.html", 400, report=None, error=message, typed=typed,
                        names=specimen_names(database()))

        if not name or not files:
            return refused("a specimen name and at least one file are needed")
        if problem := name_problem(name):
            return refused(problem)
        try:
            meta = parse_metadata(metadata)
        except HTTPException as e:
            return refused(e.detail)
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for i, upload in enumerate(files):  # the original name, in a folder of its own
                path = Path(tmp) / str(i) / upload_name(upload)
                path.parent.mkdir()
                path.write_bytes(await upload.read())
                paths.append(path)
            report = await service.run(service.enrol, [(name, paths)], meta, allow_low_quality=allow_low_quality)
        data = {"specimen": name, "enrolled": len(report.enrolled), "skipped": len(report.skipped),
                "refused": [f"{Path(e.path).name}: {e.reason}" for e in report.refused],
                "warnings": [f"{Path(path).name}: {warning}" for path, warning in report.warnings]}
        status = 400 if report.refused and not (report.enrolled or report.skipped) else 200
        if is_api(request):
            return JSONResponse(data, status_code=status)
        if report.refused or report.warnings:  # said on the page, which links to the specimen
            shown = {**data, "refused": [for_the_page(r) for r in data["refused"]],
                     "low_quality": any(isinstance(e, LowQuality) for e in report.refused)}
            return page(request, "enrol.html", status, report=shown, typed=typed, names=specimen_names(database()),
                        url=f"/specimens/{quote(name)}")
        return RedirectResponse(f"/specimens/{quote(name)}", status_code=303)

    @app.post("/queries/{uuid_}/review")
    @app.post("/api/queries/{uuid_}/review")
    def review(request: Request, uuid_: str, reviewer: str = Form(), note: str = Form(""),
               specimen: str = Form(""), capture: str = Form(""), none: bool = Form(False),
               verdict: str = Form("")):
        """What the query shows: `specimen` (named), `capture` (the specimen that holds that
        candidate's capture: "this one"), `none` (none of those offered), or an older `verdict`
        on the decision (confirmed, rejected)."""
        answer = "specimen" if specimen or capture else "none" if none else verdict
        if sum(map(bool, (specimen, capture, none, verdict))) != 1:
            raise HTTPException(400, "choose the specimen the query shows, or none of these")
        named = database().review(uuid_, answer, reviewer, note, specimen=specimen or None, capture=capture or None)
        return done(request, f"/queries/{uuid_}", {"query_id": uuid_, "verdict": answer, "specimen": named})

    @app.post("/queries/{uuid_}/enrol")
    @app.post("/api/queries/{uuid_}/enrol")
    async def enrol_query(request: Request, uuid_: str, specimen: str = Form()):
        try:
            path = await service.run(lambda: database().blobs.file(database().image_key("query", uuid_)))
        except KeyError:
            raise HTTPException(404, "no such query") from None
        report = await service.run(service.enrol, [(specimen, [path])])
        if report.refused:
            raise HTTPException(400, report.refused[0].reason)
        return done(request, f"/specimens/{quote(specimen)}", {"specimen": specimen,
                                                               "enrolled": len(report.enrolled)})

    allowed = ["127.0.0.1", "localhost", "[::1]", *(allowed_hosts or [])]
    if host not in ("0.0.0.0", "::"):
        allowed.append(host)
    if not is_loopback(host) and not allowed_hosts:
        allowed += machine_hosts()
    # the last added runs first: the Host check, then the token, then the body's limits
    app.add_middleware(RecordClient)
    app.add_middleware(SameOrigin)
    app.add_middleware(BodyLimit, max_bytes=max_upload, timeout=body_timeout, deadline=BODY_DEADLINE_S)
    if token:
        app.add_middleware(TokenRequired, token=token)
    app.add_middleware(AllowedHosts, hosts=allowed)
    return app

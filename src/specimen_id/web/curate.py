"""A specimen's page and the changes made from it: edit, rename, merge, move a capture, remove
and restore. Each form posts and goes on to the page that shows the result; each has an /api
twin answering JSON. On a page:
- what files data for good (merge, move, remove) asks once more, saying what it will do;
- a change that cannot be made (a name taken, a specimen mistyped, a metadata line without `=`)
  shows the specimen's page again with the reason beside the form, what was typed kept, and the
  names that exist to pick from."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse

from ..errors import DatabaseUnusable, SpecimenIdError
from .pages import done, is_api, page, parse_metadata, specimen_names


def curation(service) -> APIRouter:
    router = APIRouter()
    database = service.database

    def specimen_data(name: str) -> dict:
        from ..search.score import DEFAULT_THRESHOLD, SCORE_KIND

        db = database()
        found = db.specimen(name)
        record = db.threshold_record(SCORE_KIND) or {"value": DEFAULT_THRESHOLD}
        return {**found, "captures": db.captures(found["id"]), "queries": db.queries(50, found["id"]),
                "overlaps": db.overlaps_of(found["id"]),
                "threshold": record["value"], "calibration": record.get("calibration"),
                "audit": db.audit_trail(found["name"], 10)}

    def specimen_page(request: Request, name: str, status: int = 200, **problem):
        """The specimen's page, with `problem` ({form: ..., error: ..., typed: ...}) beside a form."""
        data = specimen_data(name)
        names = [n for n in specimen_names(database()) if n != data["name"]]
        return page(request, "specimen.html", status, specimen=data, names=names, problem=problem)

    def change(request: Request, name: str, form: str, typed: dict, make, confirm: str | None = None):
        """Make a change from a form: on a page, ask first when `confirm` says what it will do,
        and show a refusal beside the form; the /api twin answers as the error handlers do."""
        if is_api(request):
            return make()
        if confirm is not None and typed.get("confirmed") != "1":
            return page(request, "confirm.html", question=confirm, action=str(request.url.path),
                        fields={k: v for k, v in typed.items() if k != "confirmed"},
                        back=f"/specimens/{quote(name)}")
        try:
            return make()
        except DatabaseUnusable:
            raise  # locked, full disk: the app's 503 or 507, not a form to correct
        except (SpecimenIdError, HTTPException) as e:
            reason = str(e) if isinstance(e, SpecimenIdError) else e.detail
            return specimen_page(request, name, 400 if not isinstance(e, HTTPException) else e.status_code,
                                 form=form, error=reason, typed=typed)

    @router.get("/specimens/{name}", response_class=HTMLResponse)
    @router.get("/api/specimens/{name}")
    def specimen(request: Request, name: str):
        return specimen_data(name) if is_api(request) else specimen_page(request, name)

    @router.post("/specimens/{name}/edit")
    @router.post("/api/specimens/{name}/edit")
    def edit(request: Request, name: str, metadata: str = Form(""), notes: str = Form("")):
        def make():
            database().edit_specimen(name, parse_metadata(metadata), notes)
            return done(request, f"/specimens/{quote(name)}", {"specimen": name})
        return change(request, name, "edit", {"metadata": metadata, "notes": notes}, make)

    @router.post("/specimens/{name}/rename")
    @router.post("/api/specimens/{name}/rename")
    def rename(request: Request, name: str, new_name: str = Form()):
        def make():
            database().rename_specimen(name, new_name.strip())
            return done(request, f"/specimens/{quote(new_name.strip())}", {"specimen": new_name.strip()})
        return change(request, name, "rename", {"new_name": new_name}, make)

    @router.post("/specimens/{name}/merge")
    @router.post("/api/specimens/{name}/merge")
    def merge(request: Request, name: str, into: str = Form(), confirmed: str = Form("")):
        into = into.strip()

        def make():
            moved = database().merge_specimens(name, into)
            return done(request, f"/specimens/{quote(into)}", {"specimen": into, "moved": moved})
        question = None if is_api(request) else _merge_question(database(), name, into)
        return change(request, name, "merge", {"into": into, "confirmed": confirmed}, make, question)

    @router.post("/captures/{uuid_}/move")
    @router.post("/api/captures/{uuid_}/move")
    def move(request: Request, uuid_: str, to: str = Form(), confirmed: str = Form("")):
        to = to.strip()
        db = database()

        def make():
            db.move_capture(uuid_, to)
            return done(request, f"/specimens/{quote(to)}", {"capture": uuid_, "specimen": to})
        owner = None if is_api(request) else db.capture_owner(uuid_)
        if owner is None:  # the JSON twin, or a capture the store will say why it cannot move
            return make()
        target = _named(db, to)
        question = None
        if target is not None and target["name"] != owner["specimen"]:
            question = (f"Move capture {owner['original_name'] or uuid_} from {owner['specimen']} to "
                        f"{target['name']}? Queries will find it as {target['name']} from now on.")
        return change(request, owner["specimen"], f"move-{uuid_}", {"to": to, "confirmed": confirmed}, make,
                      question)

    @router.post("/specimens/{name}/remove")
    @router.post("/api/specimens/{name}/remove")
    def remove(request: Request, name: str, confirmed: str = Form("")):
        def make():
            hidden = database().remove_specimen(name)
            return done(request, "/", {"specimen": name, "removed": hidden})
        question = None
        if not is_api(request):
            count = len(database().captures(database().specimen(name)["id"]))
            question = (f"Remove {name} and its {count} capture(s)? Queries will no longer find it; it "
                        "stays listed under Removed, where Restore brings it back.")
        return change(request, name, "remove", {"confirmed": confirmed}, make, question)

    @router.post("/specimens/{name}/restore")
    @router.post("/api/specimens/{name}/restore")
    def restore(request: Request, name: str):
        restored = database().restore_specimen(name)
        return done(request, f"/specimens/{quote(name)}", {"specimen": name, "restored": restored})

    return router


def _named(db, name: str) -> dict | None:
    """The specimen a form names (by name or uuid, as the store takes it), or None."""
    try:
        return db.specimen(name)
    except SpecimenIdError:
        return None


def _merge_question(db, name: str, into: str) -> str | None:
    """What a merge will do, or None when it cannot be done (the refusal then shows)."""
    source, target = _named(db, name), _named(db, into)
    if source is None or target is None or source["id"] == target["id"]:
        return None
    counts = {s["name"]: s["captures"] for s in db.specimens()}
    return (f"Merge {source['name']} ({counts[source['name']]} capture(s)) into {target['name']} "
            f"({counts[target['name']]} capture(s))? Its captures, past queries and reviews go to "
            f"{target['name']}, and {source['name']} is gone.")

"""What every route of the browse app shares: the templates, pages and their JSON twins under
/api, the redirect after a form, and the `key = value` metadata forms."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
# The core's refusals name the CLI's way out; a page offers its own.
WEB_WAYS_OUT = {
    "(use --allow-low-quality to enrol it anyway)":
        "(tick \"Enrol captures below the quality limits anyway\" to enrol it as it is)",
    "(use --allow-duplicate to enrol it here too)":
        "(the same pixels under two names is allowed only from the command line: enroll --allow-duplicate)",
    " (see `specimen-id list`)": " (pick one of the names offered)",
}


def page(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status)


def is_api(request: Request) -> bool:
    """JSON twins live under /api; everything else is a page."""
    return request.url.path.startswith("/api/")


def done(request: Request, url: str, data: dict):
    """After a change: the JSON twin answers with data, a page form goes on to url."""
    if is_api(request):
        return data
    return RedirectResponse(url, status_code=303)


def specimen_names(db) -> list[str]:
    """Every specimen's name, to pick from in a form."""
    return [s["name"] for s in db.specimens()]


def needs_review(query: dict) -> bool:
    """An `ambiguous` answer nobody has reviewed yet: it needs a person."""
    return query["decision"] == "ambiguous" and not query["review"]


def for_the_page(reason: str) -> str:
    for cli_way, web_way in WEB_WAYS_OUT.items():
        reason = reason.replace(cli_way, web_way)
    return re.sub(r"; `specimen-id restore (.*)` brings it back, `specimen-id purge .*` frees the name$",
                  r"; Restore it from the list of removed specimens on the first page", reason)


def parse_metadata(text: str) -> dict:
    """`key = value` lines (blank lines ignored) to a dict."""
    pairs = [line.partition("=") for line in text.splitlines() if line.strip()]
    bad = [key for key, sep, _ in pairs if not sep or not key.strip()]
    if bad:
        raise HTTPException(400, f"metadata lines must read key = value, not {bad[0]!r}")
    return {key.strip(): value.strip() for key, _, value in pairs}

"""Request guards for the browse app, each a plain ASGI middleware.

- Upload size is limited while the body streams in, not after it was read whole.
- State-changing requests whose Origin (or Referer) names another site are refused: browsers
  send Origin on every cross-site POST, so this stops cross-site request forgery, while lab
  systems posting without a browser (no Origin) still work.
- Off the loopback interface every request needs the user's token (header, or a cookie set by
  visiting any page once with ?token=...).
The Host header is checked by Starlette's TrustedHostMiddleware (DNS rebinding).
"""

from __future__ import annotations

import hmac
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


async def _reply(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes
        self.message = f"upload larger than {max_bytes / 1e6:g} MB"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            return await _reply(send, 413, self.message)
        seen, refused = 0, False

        async def limited():
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes and not refused:
                refused = True  # answer now, then stop the app reading any further
                await _reply(send, 413, self.message)
                raise UploadTooLarge()
            return message

        async def unless_refused(message):
            if not refused:  # the app may turn the interruption into a response of its own
                await send(message)

        try:
            await self.app(scope, limited, unless_refused)
        except UploadTooLarge:
            pass


class UploadTooLarge(Exception):
    pass


class SameOrigin:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in STATE_CHANGING:
            source = _header(scope, b"origin") or _header(scope, b"referer")
            if source and urlsplit(source).netloc != _header(scope, b"host"):
                return await _reply(send, 403, "cross-site request refused")
        await self.app(scope, receive, send)


class TokenRequired:
    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        offered = (_header(scope, b"authorization") or "").removeprefix("Bearer ")
        cookie = SimpleCookie(_header(scope, b"cookie") or "").get("specimen_id_token")
        from_url = parse_qs(scope.get("query_string", b"").decode()).get("token", [""])[0]
        for candidate in (offered, cookie.value if cookie else "", from_url):
            if candidate and hmac.compare_digest(candidate.encode(), self.token.encode()):
                break
        else:
            return await _reply(send, 401, "token required (open the page once with ?token=...)")

        async def with_cookie(message):
            if message["type"] == "http.response.start" and from_url:
                message["headers"] = [*message.get("headers", []), (
                    b"set-cookie", f"specimen_id_token={self.token}; HttpOnly; SameSite=Strict; Path=/".encode())]
            await send(message)

        await self.app(scope, receive, with_cookie)

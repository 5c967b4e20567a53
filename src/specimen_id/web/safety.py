"""Request guards for the browse app, each a plain ASGI middleware.

- Upload size is limited while the body streams in, not after it was read whole, and a body
  that stops arriving is cut off (408): a slow client cannot hold a worker. (uvicorn has no
  limit on how long request *headers* may take: behind a reverse proxy, or with another ASGI
  server, that limit is theirs; see the README.)
- State-changing requests whose Origin (or Referer) names another site are refused: browsers
  send Origin on every cross-site POST, so this stops cross-site request forgery, while lab
  systems posting without a browser (no Origin) still work.
- Off the loopback interface every request needs the user's token: `Authorization: Bearer`
  (the API), or a cookie set by opening any page once with ?token=..., which redirects to the
  same page without the token (so it stays out of the history and of links copied from it).
- The Host header must name this server (DNS rebinding): off loopback, one of this machine's
  names and addresses unless the user lists them (`--allowed-host`). (Starlette's own check
  reads an IPv6 Host wrongly in the versions this project supports.)
"""

from __future__ import annotations

import asyncio
import hmac
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


async def _reply(send, status: int, text: str, headers: tuple = ()) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class BodyLimit:
    """The request body: at most max_bytes, each part within `timeout` seconds of the last and
    the whole within `deadline`; else 413 or 408, and the app reads no further. Once the body
    is in (or the response has begun), messages pass untouched: a long download keeps
    listening for the client going away."""

    def __init__(self, app, max_bytes: int, timeout: float, deadline: float):
        self.app, self.max_bytes, self.timeout, self.deadline = app, max_bytes, timeout, deadline
        self.message = f"upload larger than {max_bytes / 1e6:g} MB"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            return await _reply(send, 413, self.message)
        loop = asyncio.get_running_loop()
        seen, refused, body_done, started = 0, False, False, False
        deadline = loop.time() + self.deadline

        async def refuse(status: int, text: str):
            nonlocal refused
            refused = True  # answer now, then stop the app reading any further
            await _reply(send, status, text)
            raise UploadTooLarge()

        async def limited():
            nonlocal seen, body_done
            if body_done or started:
                return await receive()
            wait = min(self.timeout, deadline - loop.time())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.0))
            except asyncio.TimeoutError:
                await refuse(408, "the request body came too slowly (a part more than "
                                  f"{self.timeout:g} s after the last, or all of it over {self.deadline:g} s); "
                                  "send it again")
            seen += len(message.get("body", b""))
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            if seen > self.max_bytes:
                await refuse(413, self.message)
            return message

        async def unless_refused(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            if not refused:  # the app may turn the interruption into a response of its own
                await send(message)

        try:
            await self.app(scope, limited, unless_refused)
        except UploadTooLarge:
            pass


class UploadTooLarge(Exception):
    """The body was refused (too large, or too slow) and answered: the app stops reading it."""


class SameOrigin:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in STATE_CHANGING:
            source = _header(scope, b"origin") or _header(scope, b"referer")
            if source and urlsplit(source).netloc != _header(scope, b"host"):
                return await _reply(send, 403, "cross-site request refused")
        await self.app(scope, receive, send)


class AllowedHosts:
    def __init__(self, app, hosts):
        self.app, self.hosts = app, {host_pattern(h).lower() for h in hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and _host_name(_header(scope, b"host") or "") not in self.hosts:
            return await _reply(send, 400, "Invalid host header")
        await self.app(scope, receive, send)


def _host_name(host: str) -> str:
    """A Host header without its port: `[fd00::2]:8000` -> `[fd00::2]`, `lab-pc:8000` -> `lab-pc`."""
    if host.startswith("["):
        return host[:host.find("]") + 1].lower()
    return host.rpartition(":")[0].lower() if ":" in host else host.lower()


class TokenRequired:
    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        offered = (_header(scope, b"authorization") or "").removeprefix("Bearer ")
        cookie = SimpleCookie(_header(scope, b"cookie") or "").get("specimen_id_token")
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        from_url = next((value for key, value in query if key == "token"), "")
        for candidate in (offered, cookie.value if cookie else "", from_url):
            if candidate and hmac.compare_digest(candidate.encode(), self.token.encode()):
                break
        else:
            return await _reply(send, 401, "token required (open the page once with ?token=...)")
        if not from_url:
            return await self.app(scope, receive, send)
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        set_cookie = (b"set-cookie", f"specimen_id_token={self.token}; HttpOnly; SameSite=Strict; "
                                     f"Path=/{secure}".encode())
        if scope["method"] in ("GET", "HEAD"):  # the same page, without the token in its address
            rest = urlencode([(key, value) for key, value in query if key != "token"])
            path = (scope.get("raw_path") or quote(scope["path"]).encode()).split(b"?", 1)[0]  # (some
            # servers leave the query in it)
            path = b"/" + path.lstrip(b"/\\")  # never `//host/...`: that would lead off this site
            location = (b"location", path + (f"?{rest}".encode() if rest else b""))
            return await _reply(send, 303, "", (location, set_cookie))

        async def with_cookie(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), set_cookie]
            await send(message)

        await self.app(scope, receive, with_cookie)


def machine_hosts() -> list[str]:
    """The names and addresses this machine answers to (what a browser on the lab's network
    puts in the Host header, once AllowedHosts has bracketed the IPv6 ones), loopback included."""
    import socket

    names = {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()}
    for name in list(names - {"::1"}):
        try:
            names |= {info[4][0] for info in socket.getaddrinfo(name, None)}
        except OSError:
            pass
    for family, probe_at in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:  # the address of the default route (no packet is sent)
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((probe_at, 9))
                names.add(probe.getsockname()[0])
        except OSError:
            pass
    return sorted(names)


def host_pattern(host: str) -> str:
    """A name or address as the Host header carries it: an IPv6 address in brackets."""
    host = host.split("%")[0]  # a link-local address's zone is not sent
    return f"[{host}]" if ":" in host and not host.startswith("[") else host

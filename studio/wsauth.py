"""Who is on the other end of a websocket (docs/architecture.md §5.1).

Scripts send `Authorization: Bearer <api token>` and no Origin; browsers send their session
cookie and an Origin that must be one of ours, or any page on the web could open a socket with
the visitor's cookie. Everything else arrives as anonymous, and consumers refuse anonymous users.
"""

from urllib.parse import urlsplit

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import split_domain_port, validate_host

from .services import bearer_token, token_authenticate

# A websocket's scope says ws or wss; the page that opened it was served over http or https.
PAGE_SCHEMES = {"ws": "http", "wss": "https"}
DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_allowed(origin: str, *, scheme: str, host: str) -> bool:
    """Whether a browser's Origin may open a socket: a trusted origin, or exactly this
    server's own (scheme, host and port, as the request's Host header names them, with the
    host one of ALLOWED_HOSTS). Another port on the same host is another site: anything
    else listening there must not be able to open a socket with our visitor's cookie."""
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    if origin != f"{parts.scheme}://{parts.netloc}":  # a path or a query: not an origin
        return False
    ours = _site(PAGE_SCHEMES.get(scheme, ""), host)
    return (
        ours is not None
        and _site(parts.scheme, parts.netloc) == ours
        and validate_host(ours[1], settings.ALLOWED_HOSTS)
    )


def _site(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the port spelled out, or None for what is not a web site."""
    if scheme not in DEFAULT_PORTS:
        return None
    domain, port = split_domain_port(netloc)
    if not domain or (port and not port.isdigit()):
        return None
    return scheme, domain, int(port) if port else DEFAULT_PORTS[scheme]


class WebsocketAuthMiddleware:
    def __init__(self, inner):
        self.inner = inner
        self.with_session = AuthMiddlewareStack(inner)

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers", []))
        origin = headers.get(b"origin", b"").decode("latin-1")
        host = headers.get(b"host", b"").decode("latin-1")
        if origin and not origin_allowed(origin, scheme=scope.get("scheme", "ws"), host=host):
            return await WebsocketDenier()(scope, receive, send)
        raw = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
        if raw:
            user = await database_sync_to_async(token_authenticate)(raw)
            scope = dict(scope, user=user or AnonymousUser(), auth="token")
            return await self.inner(scope, receive, send)
        if not origin:
            # No Origin and no token: not a browser, not an authenticated script.
            return await self.inner(dict(scope, user=AnonymousUser(), auth=None), receive, send)
        return await self.with_session(dict(scope, auth="session"), receive, send)

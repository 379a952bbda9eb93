"""Who is on the other end of a websocket (DESIGN §2, §5).

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


def origin_allowed(origin: str) -> bool:
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    domain, _port = split_domain_port(parts.netloc)
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


class WebsocketAuthMiddleware:
    def __init__(self, inner):
        self.inner = inner
        self.with_session = AuthMiddlewareStack(inner)

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers", []))
        origin = headers.get(b"origin", b"").decode("latin-1")
        if origin and not origin_allowed(origin):
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

"""Middleware: WhiteNoise made async, and the ASGI cap on request bodies.

WhiteNoise's middleware is sync-only, and under ASGI a sync middleware runs the whole request
in a worker thread, so an async view that waits for a job (the OpenAI and A1111 endpoints)
would hold a thread all the while."""

import json

from asgiref.sync import markcoroutinefunction, sync_to_async
from whitenoise.middleware import WhiteNoiseMiddleware


class AsyncWhiteNoiseMiddleware(WhiteNoiseMiddleware):
    async_capable = True
    sync_capable = False

    def __init__(self, get_response):
        super().__init__(get_response)
        markcoroutinefunction(self)

    async def __call__(self, request):
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)


class BodyTooLarge(Exception):
    pass


class RequestBodyLimit:
    """ASGI, around Django: a request body over `limit` bytes is answered 413 before Django
    reads it. Under ASGI Django spools the whole body to a temporary file before any view or
    upload handler runs, so their own caps would only come after a stranger's gigabytes had
    been written to disk. The limit is the largest body any door takes: an import's file
    and its form fields."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await self.refuse(send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # a chunked body, which names no length
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except BodyTooLarge:
            await self.refuse(send)

    async def refuse(self, send) -> None:
        message = f"The request body is larger than {self.limit:,} bytes."
        body = json.dumps({"detail": message, "errors": {"body": message}}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]})
        await send({"type": "http.response.body", "body": body})

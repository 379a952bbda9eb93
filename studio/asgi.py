"""The one ASGI entry point: Django for HTTP, every app's websocket routes behind Studio's auth."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings")
django_asgi_app = get_asgi_application()

# Imported after Django is set up: the routes import consumers, which import models.
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from generation.routing import websocket_urlpatterns as generation_ws  # noqa: E402
from studio.routing import websocket_urlpatterns as studio_ws  # noqa: E402
from studio.wsauth import WebsocketAuthMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": WebsocketAuthMiddleware(URLRouter([*studio_ws, *generation_ws])),
    }
)

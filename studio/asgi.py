"""The one ASGI entry point: Django for HTTP, every app's websocket routes behind Studio's auth."""

import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings")
django_asgi_app = get_asgi_application()

# Imported after Django is set up: the routes import consumers, which import models.
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from generation.routing import websocket_urlpatterns as generation_ws  # noqa: E402
from studio.middleware import RequestBodyLimit  # noqa: E402
from studio.routing import websocket_urlpatterns as studio_ws  # noqa: E402
from studio.wsauth import WebsocketAuthMiddleware  # noqa: E402

# The largest body a door takes: an imported file with its form fields.
BODY_LIMIT = settings.STUDIO_IMPORT_MAX_BYTES + settings.DATA_UPLOAD_MAX_MEMORY_SIZE

application = ProtocolTypeRouter(
    {
        "http": RequestBodyLimit(django_asgi_app, BODY_LIMIT),
        "websocket": WebsocketAuthMiddleware(URLRouter([*studio_ws, *generation_ws])),
    }
)

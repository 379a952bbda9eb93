"""Sends job messages to the websocket group of a job (DESIGN §5), from sync code.

The Celery worker calls `send()` every sampling step. It must not slow sampling down, so the
messages go to a channel layer owned by one long-lived event loop in a background thread:
`send()` only schedules the coroutine and returns. Progress is best effort by design; the
final state is always readable over HTTP.
"""

import asyncio
import logging
import threading
from concurrent.futures import Future

from channels.layers import get_channel_layer

log = logging.getLogger(__name__)


class Broadcaster:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="ws-send")
        self.thread.start()
        self.layer = get_channel_layer()

    def send(self, group: str, message: dict) -> Future:
        future = asyncio.run_coroutine_threadsafe(self.layer.group_send(group, message), self.loop)
        future.add_done_callback(_log_failure)
        return future


def _log_failure(future: Future) -> None:
    if future.exception() is not None:
        log.warning("dropped a job message: %s", future.exception())


_broadcaster: Broadcaster | None = None
_lock = threading.Lock()


def broadcaster() -> Broadcaster:
    """One per process, created lazily: a forked worker child must make its own loop."""
    global _broadcaster
    with _lock:
        if _broadcaster is None:
            _broadcaster = Broadcaster()
        return _broadcaster


def send(group: str, message: dict) -> Future:
    return broadcaster().send(group, message)

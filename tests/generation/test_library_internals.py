"""Where Studio relies on its dependencies beyond their public APIs, each checked as relied on.

Each reach lives in one adapter, named in its test; pyproject.toml pins the dependency's range.
A failure here after an upgrade means that adapter needs a look before anything else does.
"""

import asyncio
import os
import uuid
from types import SimpleNamespace

import channels.consumer
import pytest
from celery.fixups.django import DjangoWorkerFixup
from channels.consumer import AsyncConsumer, get_handler_name
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connections
from django.test import AsyncClient, RequestFactory
from redis import Redis

from generation import pubsub_layer
from generation.consumers import JobConsumer
from generation.engine.sampling import interrupt
from studio import forked_connections
from studio.api import ApiError, SessionCsrf
from studio.celery import app
from tests.conftest import run_async

RELAYED = ("job.progress", "job.state", "job.queue")


def layer_prefix() -> str:
    return settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("prefix", "asgi")


def test_a_plain_publish_on_the_group_channel_reaches_the_group():
    """generation/pubsub_layer.py: the Redis channel channels_redis maps a group to, and its
    serialized messages, as generation/broadcast.py publishes them."""
    layer, group = get_channel_layer(), f"internals-{uuid.uuid4().hex}"
    message = {"type": "job.progress", "step": 3, "preview": "data:image/webp;base64,AAAA"}

    async def go():
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        try:
            Redis.from_url(settings.REDIS_URL).publish(
                pubsub_layer.group_channel(layer_prefix(), group), layer.serialize(message)
            )
            return await asyncio.wait_for(layer.receive(channel), 5)
        finally:
            await layer.group_discard(group, channel)

    assert run_async(go()) == message


def test_a_new_channel_is_subscribed_in_redis_before_anything_reads_it():
    """generation/pubsub_layer.py: the channel that keeps the layer's receiver listening works
    only if `new_channel` subscribes at once, not on the first `receive`."""
    layer = get_channel_layer()

    async def go():
        channel = await layer.new_channel(prefix=pubsub_layer.KEEP_LISTENING_PREFIX)
        subscribed = dict(Redis.from_url(settings.REDIS_URL).pubsub_numsub(channel))
        await layer.flush()
        return subscribed[channel.encode()]

    assert run_async(go()) == 1


def test_channels_dispatch_only_closes_old_connections_before_the_handler(monkeypatch):
    """generation/consumers.py: JobConsumer.dispatch skips, for the worker's messages, exactly
    what Channels' own dispatch does around a handler; nothing else may be lost."""
    calls = []

    async def close_old_connections():
        calls.append("close")

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", close_old_connections)

    class Probe(AsyncConsumer):
        async def job_progress(self, message):
            calls.append(message["type"])

    run_async(Probe().dispatch({"type": "job.progress"}))
    assert calls == ["close", "job.progress"]

    relay = JobConsumer()
    sent = []

    async def send_json(content, close=False):
        sent.append(content["type"])

    relay.send_json = send_json
    calls.clear()
    for kind in RELAYED:
        assert hasattr(JobConsumer, get_handler_name({"type": kind}))
        run_async(relay.dispatch({"type": kind, "job": {}, "queue_position": 1}))
    assert calls == [] and sent == ["progress", "state", "queue"]


@pytest.mark.parametrize("autorefresh", [False, True])
def test_the_async_whitenoise_middleware_serves_static_files(settings, autorefresh):
    """studio/middleware.py: AsyncWhiteNoiseMiddleware repeats WhiteNoise's own `__call__`
    (its `autorefresh`, `files`, `find_file` and `serve`) as a coroutine."""
    settings.WHITENOISE_AUTOREFRESH = autorefresh
    response = run_async(AsyncClient().get("/static/css/studio.css"))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/css")


def test_ninja_lets_the_session_auth_check_csrf_only_after_the_session():
    """studio/api.py (SessionCsrf): its `_get_key` replaces Ninja's, which checks CSRF before
    anything else, and it checks with Ninja's `check_csrf` once a session has a user."""
    auth, cookie = SessionCsrf(), settings.SESSION_COOKIE_NAME
    stranger = RequestFactory().post("/api/v1/jobs")
    stranger.user = SimpleNamespace(is_authenticated=False)
    assert auth(stranger) is None  # answered 401 by the API, not a CSRF 403
    browser = RequestFactory().post("/api/v1/jobs", headers={"Cookie": f"{cookie}=x"})
    browser.user = SimpleNamespace(is_authenticated=True)
    with pytest.raises(ApiError) as refused:
        auth(browser)
    assert refused.value.status == 403


def test_celery_keeps_a_workers_connections_for_db_reuse_max_tasks():
    """studio/settings.py (CELERY_DB_REUSE_MAX): an undocumented knob of Celery's Django
    fix-up. Without it, the fix-up closes a worker's connection pool around every task."""
    fixup = DjangoWorkerFixup(app)
    assert fixup.db_reuse_max == settings.CELERY_DB_REUSE_MAX > 1
    closed = []
    fixup._close_database = lambda: closed.append(True)
    for _task in range(3):
        fixup.on_task_prerun(sender=SimpleNamespace(request=SimpleNamespace(is_eager=False)))
        fixup.close_database()  # what on_task_postrun does, besides closing the caches
    assert closed == []


@pytest.mark.django_db
def test_a_forked_child_disowns_the_parents_connections_and_pool():
    """studio/forked_connections.py: a sidecar's connections are its own, unpooled, and the
    worker's (the parent's) are left as they were."""
    connection = connections["default"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        parent_backend = cursor.fetchone()[0]
    pools = type(connection)._connection_pools
    assert connection.alias in pools and connection.pool is pools[connection.alias]
    pid = os.fork()
    if pid == 0:  # the child: report by exit status, and run nothing of the parent's at exit
        status = 1
        try:
            forked_connections.disown()
            unpooled = connection.connection is None and connection.pool is None and not pools
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                own = cursor.fetchone()[0] != parent_backend
            status = 0 if unpooled and own else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] == parent_backend
    assert connection.alias in pools


def tensors_until_interrupted(pipe, prompt: str) -> list[dict]:
    """The shapes of `noise_pred` and `latent_model_input` a step callback reads by name, step
    by step, until it stops the loop after its second step."""
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append({name: tuple(tensor.shape) for name, tensor in tensors.items()})
        if i == 1:
            interrupt(pipe)
        return {}

    pipe.set_progress_bar_config(disable=True)
    pipe(
        prompt=prompt, num_inference_steps=6, height=32, width=32, guidance_scale=3.0,
        output_type="latent", callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["noise_pred", "latent_model_input"],
    )
    return seen


def test_diffusers_stops_and_hands_the_callback_its_tensors(tiny_pipeline):
    """generation/engine/sampling.py (`interrupt`) and engine/models.py (StudioPipeline's
    `_callback_tensor_inputs`): a step callback can stop the loop, and can read the locals
    `noise_pred` and `latent_model_input` of the stock pipeline's loop by name."""
    seen = tensors_until_interrupted(tiny_pipeline, "red circle")
    latent = (1, 4, 8, 8)
    assert seen == [{"noise_pred": latent, "latent_model_input": (2, 4, 8, 8)}] * 2


def test_sdxl_hands_the_step_callback_its_tensors_and_stops(family_pipeline):
    """generation/engine/models.py (StudioXLPipeline's `_callback_tensor_inputs`) and
    sampling.py (`interrupt`): SDXL's loop has the locals previews read, by name."""
    seen = tensors_until_interrupted(family_pipeline("sdxl"), "a red circle")
    assert seen == [{"noise_pred": (1, 4, 16, 16), "latent_model_input": (2, 4, 16, 16)}] * 2

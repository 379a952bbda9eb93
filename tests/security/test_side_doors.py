"""The doors beside the pages and the REST API: a job's websocket, signed links, and what the
OpenAI- and A1111-compatible APIs tell a caller.

A job's websocket admits its owner and staff only, by token or by a browser session from the
page's own origin (scheme, host and port). A signed link opens one path, for an hour, as the
user it was signed for, rechecked on every use. The compatible APIs show a caller nothing of
another user's, nor where the server keeps its files.
"""

import asyncio
import json
import time

import pytest
from django.conf import settings
from django.urls import reverse
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from studio.api import signed_url
from tests.conftest import run_async

from .conftest import ACTORS

pytestmark = pytest.mark.django_db

OWNER_OR_STAFF = {"alice", "admin"}


def watch(server, job, headers: dict) -> str:
    """"accepted" when the socket opens and sends the job's state; else "refused"."""
    async def go():
        url = f"{server.ws_url}/ws/jobs/{job.pk}/"
        try:
            async with connect(url, additional_headers=headers, open_timeout=10) as socket:
                message = json.loads(await asyncio.wait_for(socket.recv(), 10))
        except (InvalidStatus, ConnectionClosed):
            return "refused"
        return "accepted" if message["job"]["id"] == str(job.pk) else f"sent {message}"

    return run_async(go())


def by_token(world, server, actor) -> dict:
    return {"Authorization": f"Bearer {world.tokens[actor]}"} if actor in world.tokens else {}


def by_session(world, server, actor) -> dict:
    headers = {"Origin": server.url}
    if actor in world.sessions:
        headers["Cookie"] = f"{settings.SESSION_COOKIE_NAME}={world.sessions[actor]}"
    return headers


@pytest.mark.parametrize("job", ["batch", "running"])
@pytest.mark.parametrize("auth", [by_token, by_session], ids=["token", "session"])
def test_a_jobs_websocket_admits_only_its_owner_and_staff(world, socket_server, job, auth):
    answered = {actor: watch(socket_server, world.jobs[job], auth(world, socket_server, actor))
                for actor in ACTORS}
    assert answered == {actor: "accepted" if actor in OWNER_OR_STAFF else "refused"
                        for actor in ACTORS}


def other_port(server) -> str:
    return f"http://127.0.0.1:{server.port + 1 if server.port < 65535 else server.port - 1}"


@pytest.mark.parametrize(("origin", "expected"), [
    (lambda s: s.url, "accepted"),
    (other_port, "refused"),
    (lambda s: s.url.replace("http://", "https://"), "refused"),
    (lambda s: "http://evil.example", "refused"),
    (lambda s: "null", "refused"),
], ids=["same-origin", "another-port", "another-scheme", "another-host", "null"])
def test_a_browser_socket_opens_only_from_the_pages_own_origin(world, socket_server, origin,
                                                                expected):
    headers = {"Origin": origin(socket_server),
               "Cookie": f"{settings.SESSION_COOKIE_NAME}={world.sessions['alice']}"}
    assert watch(socket_server, world.jobs["running"], headers) == expected


# --- Signed links -------------------------------------------------------------------------


def file_path(image) -> str:
    return reverse("api:image_file", args=[image.pk])


def signature(link: str) -> str:
    return link.partition("?signature=")[2]


def test_a_signed_link_opens_only_the_path_it_was_signed_for(world):
    public, private = world.images["public"], world.images["private"]
    link = signed_url(file_path(public), user=world.users["alice"])
    anonymous = world.client("anonymous")
    assert anonymous.get(link).status_code == 200
    assert anonymous.get(f"{file_path(private)}?signature={signature(link)}").status_code == 401
    detail = f"/api/v1/images/{public.pk}?signature={signature(link)}"
    assert anonymous.get(detail).status_code == 401  # a link to the file is no API key


def test_a_tampered_or_expired_signed_link_opens_nothing(world, monkeypatch):
    path = file_path(world.images["private"])
    link = signed_url(path, user=world.users["alice"])
    anonymous = world.client("anonymous")
    assert anonymous.get(link[:-3] + "abc").status_code == 401
    real_time = time.time
    with monkeypatch.context() as patched:
        patched.setattr(time, "time", lambda: real_time() - 2 * 3600)
        expired = signed_url(path, user=world.users["alice"])
    assert anonymous.get(expired).status_code == 401


@pytest.mark.parametrize(("kind", "expected"), [
    ("public", 200), ("private", 404), ("team", 404), ("hidden", 404), ("sibling", 404)])
def test_a_link_signed_for_a_stranger_opens_only_what_the_stranger_may_see(world, kind,
                                                                           expected):
    """Access is checked again when a link is used: a link carol once got for an image that
    was public since went private opens nothing."""
    link = signed_url(file_path(world.images[kind]), user=world.users["carol"])
    assert world.client("anonymous").get(link).status_code == expected


# --- The compatible APIs ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/sdapi/v1/sd-models", "/sdapi/v1/options", "/v1/models",
                                  "/api/v1/models"])
def test_no_api_tells_a_caller_where_the_server_keeps_its_files(world, settings, tiny_model,
                                                                 path):
    settings.STUDIO_MODELS = {**settings.STUDIO_MODELS, "tiny": tiny_model}
    response = world.api("carol").get(path)
    assert response.status_code == 200
    body = response.content.decode()
    for secret in (str(settings.STUDIO_DEMO_MODEL_PATH), tiny_model, str(settings.BASE_DIR)):
        assert secret not in body and json.dumps(secret)[1:-1] not in body


@pytest.mark.parametrize("path", ["/v1/images/{id}", "/v1/files/{id}", "/v1/files/{id}/content",
                                  "/v1/images/{id}/content", "/sdapi/v1/png-info?image={id}"])
def test_the_compatible_apis_have_no_door_to_another_users_image(world, path):
    for kind in ("private", "sibling", "hidden"):
        url = path.format(id=world.images[kind].pk)
        response = world.api("carol").get(url)
        assert response.status_code in (401, 404, 405), (url, response.status_code)
        assert str(world.images[kind].pk) not in response.content.decode()


def test_a1111_progress_never_shows_another_users_preview(world):
    """Previews travel with progress: carol's idle progress shows no image, no job of alice's."""
    answer = world.api("carol").get("/sdapi/v1/progress").json()
    assert answer["current_image"] is None and answer["state"]["job"] == ""
    assert answer["state"]["job_count"] == 0

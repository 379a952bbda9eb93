"""No request stalls the server: while each hostile request is in flight, `/healthz` still
answers within 100 ms.

The server runs in a process of its own (tests/security/conftest.py, ServerProcess): a
request that holds the interpreter for hours would otherwise hold this test too. Each
measurement warms the server and the door first, then probes `/healthz` over and over while
the hostile request runs and takes the slowest probe. A busy build machine can slow one
probe past 100 ms by chance, so a measurement in that grey zone is taken again (up to three
times); a stall shows every time, and one past STALL seconds is not retried.
"""

import io
import json
import threading
import time
from dataclasses import dataclass

import pytest
import requests
from django.conf import settings
from PIL import Image as PILImage
from PIL import PngImagePlugin

from .conftest import ServerProcess

# The server reads the committed world; the mark makes pytest-django build the test database.
pytestmark = pytest.mark.django_db

LIMIT = 0.1  # seconds: the slowest /healthz answer allowed while a hostile request runs
STALL = 0.5  # a probe slower than this is a stall, not noise: no second try
PROBE_TIMEOUT = 2.0
MIN_PROBES = 5
ATTEMPTS = 3
BODY_LIMIT = 2560 * 1024  # the server runs with this STUDIO_MAX_BODY_BYTES, far below the default


@pytest.fixture(scope="module")
def server(world):
    """Studio on the test database, with the world's media folder and signing key."""
    process = ServerProcess()
    process.start(env={
        "REDIS_URL": settings.REDIS_URL, "STUDIO_QUEUE": settings.STUDIO_QUEUE,
        "MEDIA_ROOT": str(settings.MEDIA_ROOT), "SECRET_KEY": settings.SECRET_KEY,
        "STUDIO_MAX_BODY_BYTES": str(BODY_LIMIT),
    })
    yield process
    process.stop()


@dataclass
class Measurement:
    worst: float  # seconds, the slowest probe
    probes: int
    status: int | None  # what the hostile request got, None if it had no answer yet


def probe(session: requests.Session, url: str) -> float:
    started = time.perf_counter()
    try:
        session.get(url + "/healthz", timeout=PROBE_TIMEOUT).raise_for_status()
    except requests.RequestException:
        return float("inf")
    return time.perf_counter() - started


def measure(server: ServerProcess, hostile) -> Measurement:
    """Send `hostile(url)` in a thread and probe /healthz until it has an answer (at least
    MIN_PROBES times, for at most a few seconds)."""
    answer: dict = {}

    def attack():
        try:
            answer["status"] = hostile(server.url).status_code
        except requests.RequestException:
            answer["status"] = None

    with requests.Session() as session:
        for _ in range(5):
            probe(session, server.url)  # a warm connection, pool and cache
        thread = threading.Thread(target=attack, daemon=True)
        thread.start()
        latencies = []
        deadline = time.monotonic() + 4
        while (thread.is_alive() or len(latencies) < MIN_PROBES) and time.monotonic() < deadline:
            latencies.append(probe(session, server.url))
            if latencies[-1] > STALL:
                break
            time.sleep(0.005)
    thread.join(timeout=0.1)
    return Measurement(max(latencies), len(latencies), answer.get("status"))


def bearer(world, name="alice") -> dict:
    return {"Authorization": f"Bearer {world.tokens[name]}"}


def a1111_with_checkpoint(world, spaces: int):
    body = json.dumps({"prompt": "a red circle",
                       "override_settings": {"sd_model_checkpoint": "a" + " " * spaces + "b"}})

    def send(url):
        return requests.post(url + "/sdapi/v1/txt2img", data=body, timeout=60,
                             headers={**bearer(world), "Content-Type": "application/json"})
    return send


def api_job(world, prompt_chars: int):
    body = json.dumps({"prompt": "a " * (prompt_chars // 2)})

    def send(url):
        return requests.post(url + "/api/v1/jobs", data=body, timeout=60,
                             headers={**bearer(world), "Content-Type": "application/json"})
    return send


def hostile_png(parameters: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def import_upload(world, parameters: str):
    """A logged-in browser's upload: the session cookie, and the CSRF token its page gave."""
    data = hostile_png(parameters)

    def send(url):
        with requests.Session() as browser:
            browser.cookies.set(settings.SESSION_COOKIE_NAME, world.sessions["alice"])
            browser.get(url + "/import/", timeout=10)
            token = browser.cookies.get(settings.CSRF_COOKIE_NAME, "")
            return browser.post(url + "/import/", data={"csrfmiddlewaretoken": token},
                                files={"image": ("hostile.png", data, "image/png")},
                                allow_redirects=False, timeout=60)
    return send


# A settings line of one word and a long run of spaces: the shape A1111's settings regex
# backtracks over quadratically.
BACKTRACKING_LINE = "a" + " " * 24_000 + "b"

HOSTILE = {
    "a1111-checkpoint-of-36000-spaces": lambda w: a1111_with_checkpoint(w, 36_000),
    "a1111-2.5-mb-body-of-spaces": lambda w: a1111_with_checkpoint(w, BODY_LIMIT - 1024),
    "a1111-body-over-the-limit": lambda w: a1111_with_checkpoint(w, BODY_LIMIT + 2**20),
    "import-with-backtracking-parameters": lambda w: import_upload(
        w, "a red circle\n" + BACKTRACKING_LINE),
    "import-with-a-megabyte-of-parameters": lambda w: import_upload(
        w, "a red circle\n" + "a" * (2**20 - 100)),
    "api-job-with-a-2.4-mb-prompt": lambda w: api_job(w, BODY_LIMIT - 200 * 1024),
    "api-job-over-the-limit": lambda w: api_job(w, BODY_LIMIT + 2**20),
}


@pytest.mark.parametrize("hostile", HOSTILE)
def test_the_server_answers_healthz_within_100_ms_while_a_hostile_request_runs(
    world, server, hostile
):
    server.ensure_alive()
    send = HOSTILE[hostile](world)
    tries = []
    for _ in range(ATTEMPTS):
        tries.append(measure(server, send))
        if tries[-1].worst < LIMIT or tries[-1].worst > STALL:
            break
    best = min(tries, key=lambda m: m.worst)
    assert best.worst < LIMIT, (
        f"/healthz took {best.worst * 1000:.0f} ms at worst while {hostile} ran "
        f"({[f'{m.worst * 1000:.0f} ms of {m.probes} probes' for m in tries]})")
    if best.status is not None:
        assert best.status < 500, f"{hostile} got a {best.status}"


def test_healthz_is_fast_on_an_idle_server(server):
    """The baseline: if this fails, the machine is too busy for the measurements above."""
    server.ensure_alive()
    with requests.Session() as session:
        for _ in range(5):
            probe(session, server.url)
        assert sorted(probe(session, server.url) for _ in range(20))[10] < LIMIT

"""/healthz (studio/health.py): Postgres, Redis and the media storage, each named in the
answer; 200 only when all three answer, 503 naming the one that did not, within seconds even
when a dependency never answers at all."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from studio import health
from tests.conftest import ROOT, free_port
from tests.s3_server import S3Server, storage_setting

ALL_OK = {"database": "ok", "redis": "ok", "storage": "ok"}
SECONDS = health.DEADLINE + 1.5  # the slowest answer allowed for a dependency that hangs


@pytest.fixture(autouse=True)
def fresh_probes():
    """Each test's settings are its own: no answer carries over from the test before."""
    health.forget()
    yield
    health.forget()


def healthz(client) -> tuple[int, dict, float]:
    started = time.monotonic()
    response = client.get("/healthz")
    return response.status_code, response.json(), time.monotonic() - started


@pytest.mark.django_db
def test_all_three_answer_on_the_local_disk(client, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"  # not made yet: the first image makes it
    assert healthz(client)[:2] == (200, ALL_OK)


@pytest.mark.django_db
def test_redis_not_answering_is_a_503_naming_redis(client, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    status, body, seconds = healthz(client)
    assert status == 503 and body["redis"].startswith("error: ConnectionError")
    assert (body["database"], body["storage"]) == ("ok", "ok")
    assert seconds < SECONDS


@pytest.mark.django_db
def test_a_media_folder_that_cannot_be_written_is_a_503_naming_storage(client, settings,
                                                                          tmp_path):
    settings.MEDIA_ROOT = tmp_path / "a-file"
    settings.MEDIA_ROOT.write_text("not a folder")
    status, body, _ = healthz(client)
    assert status == 503 and body == {**ALL_OK, "storage": "error: NotADirectoryError"}


def test_the_answer_names_the_failure_but_not_its_details(monkeypatch, caplog):
    def failing():
        raise OSError("could not reach http://10.1.2.3:9000")

    monkeypatch.setattr(health, "CHECKS", {"fine": lambda: None, "store": failing})
    assert health.report() == {"fine": "ok", "store": "error: OSError"}
    assert "10.1.2.3" in caplog.text  # for the operator, in the log


def test_a_check_that_never_answers_is_reported_at_the_deadline(monkeypatch):
    monkeypatch.setattr(health, "CHECKS", {"fine": lambda: None, "stuck": lambda: time.sleep(5)})
    started = time.monotonic()
    report = health.report(deadline=0.5)
    assert time.monotonic() - started < 1.5
    assert report == {"fine": "ok", "stuck": "error: no answer within 0.5 s"}


def test_requests_that_arrive_during_a_probe_share_it(monkeypatch):
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.3)

    monkeypatch.setattr(health, "CHECKS", {"slow": slow})
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(health.report()))
               for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [{"slow": "ok"}] * 5 and len(calls) == 1
    health.report()  # within REUSE_SECONDS of its end: the same answer
    assert len(calls) == 1
    time.sleep(health.REUSE_SECONDS)
    health.report()  # then the next request probes afresh
    assert len(calls) == 2


# --- The S3 store ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_s3_store_answering_is_ok(client, s3_media):
    assert healthz(client)[:2] == (200, ALL_OK)


def use_store(settings, env: dict) -> None:
    settings.STORAGES = {**settings.STORAGES, "default": storage_setting(env)}


@pytest.mark.django_db
def test_a_missing_bucket_is_a_503_naming_storage(client, settings, s3_server):
    use_store(settings, s3_server.env("no-such-bucket"))  # Studio never creates it
    status, body, _ = healthz(client)
    assert status == 503 and body == {**ALL_OK, "storage": "error: ClientError"}


@pytest.mark.django_db
def test_a_stopped_store_is_a_503_naming_storage_within_seconds(client, settings):
    store = S3Server()
    store.start()
    store.create_bucket("studio-stopped")
    use_store(settings, store.env("studio-stopped"))
    try:
        assert healthz(client)[:2] == (200, ALL_OK)
    finally:
        store.stop()
    health.forget()  # not the answer of a second ago
    status, body, seconds = healthz(client)
    assert status == 503 and body["storage"].startswith("error: ")
    assert (body["database"], body["redis"]) == ("ok", "ok")
    assert seconds < SECONDS


@pytest.mark.django_db
def test_a_store_that_never_answers_is_a_503_naming_storage_within_seconds(
    client, settings, s3_server
):
    """A blackhole: the connection is accepted (the kernel's backlog) but nothing ever
    answers, as behind a hung server or a dead route's proxy."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        env = {**s3_server.env("studio-test"),
               "AWS_S3_ENDPOINT_URL": f"http://127.0.0.1:{hole.getsockname()[1]}"}
        use_store(settings, env)
        status, body, seconds = healthz(client)
    assert status == 503, body
    assert body == {**ALL_OK, "storage": f"error: no answer within {health.DEADLINE:g} s"}
    assert seconds < SECONDS


# --- A server process of its own, configured from its environment alone ------------------


def test_a_server_without_its_database_answers_503_naming_the_database(s3_media):
    """Studio under uvicorn, its store set by STUDIO_MEDIA_STORAGE=s3 and the AWS_* names,
    its database on a port where nothing listens."""
    port = free_port()
    env = {**os.environ, **s3_media.env, "HF_HUB_OFFLINE": "1",
           "DATABASE_URL": f"postgres://postgres@127.0.0.1:{free_port()}/studio"}
    cmd = [sys.executable, "-m", "uvicorn", "studio.asgi:application", "--host", "127.0.0.1",
           "--port", str(port), "--lifespan", "off", "--log-level", "warning"]
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        status, body = answer(f"http://127.0.0.1:{port}/healthz", server)
    finally:
        server.kill()
        server.wait()
    assert status == 503
    assert body["database"].startswith("error: ")
    assert (body["redis"], body["storage"]) == ("ok", "ok")


def answer(url: str, server: subprocess.Popen, timeout: float = 60) -> tuple[int, dict]:
    """The first answer the server gives, whatever its status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the server did not answer")

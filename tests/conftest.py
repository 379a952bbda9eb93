"""Shared fixtures: the people (docs/architecture.md §8), a live ASGI server, a real Celery
worker and a real S3-compatible store (tests/s3_server.py); and the `slow` mark on the tests
that start one, which `make test-fast` leaves out.

alice owns things, bob is alice's teammate, carol has no access, admin is staff.
"""

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from django.conf import settings

from tests.s3_server import S3Server, storage_setting

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery-staple"


# What makes a test slow: a server, a worker or another process of its own, a browser, the
# real demo model, or a model of every family (SDXL's included). These fixtures bring one (the
# generic `server` and `worker` are test_stall's, test_live_leaks's and test_batch_privacy's),
# and so does a test that uses these names itself.
SLOW_FIXTURES = frozenset({
    "studio_server", "socket_server", "server", "celery_worker", "module_worker", "worker",
    "browser", "demo_pipeline", "family_models", "s3_server",
})
SLOW_NAMES = frozenset({"LiveServer", "ServerProcess", "Worker", "subprocess", "S3Server"})


def pytest_collection_modifyitems(items):
    """Mark `slow` every test that starts a live server, a worker or another process, or a
    browser, or runs the demo model or builds every family's models, so `make test-fast`
    (-m "not slow") runs the rest: the engine on the tiny model, recipes, services and views."""
    for item in items:
        function = getattr(item, "function", None)
        names = names_used(function.__code__) if function else set()
        if (SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ()))
                or SLOW_NAMES & names or item.get_closest_marker("e2e")):
            item.add_marker(pytest.mark.slow)


def names_used(code) -> set[str]:
    """The global and attribute names a function's code uses, its comprehensions' included."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= names_used(const)
    return names


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """A test database, a broker queue and cache keys of this run's own (test_studio_<pid>),
    so test runs side by side on one machine (developers, CI) never meet: the log-in
    throttle's counters, say, are kept by username in the shared Redis."""
    suffix = str(os.getpid())
    test = settings.DATABASES["default"].setdefault("TEST", {})
    test["NAME"] = f"test_{settings.DATABASES['default']['NAME']}_{suffix}"
    settings.STUDIO_QUEUE = f"{settings.STUDIO_QUEUE}-test-{suffix}"
    settings.CACHES["default"]["KEY_PREFIX"] = f"studio-test-{suffix}"


@pytest.fixture(scope="session", autouse=True)
def static_files_found_per_request():
    """WhiteNoise lists every static file (Django's admin's and the API docs' included) each
    time its middleware is made, and every test client makes one: a fifth of a view test's
    time. Tests ask for static files seldom, so they find each when asked, as development
    does; tests/generation/test_library_internals.py serves them both ways."""
    settings.WHITENOISE_AUTOREFRESH = True


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    # Real hashing takes about a second a user on the busy 2-core build machines, and only
    # Django's own hasher would be under test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def no_models_folder(settings, tmp_path_factory):
    """A developer's ./models never reaches a test: each starts with empty model and LoRA
    folders unless it makes its own."""
    settings.STUDIO_MODELS_DIR = tmp_path_factory.getbasetemp() / "no-models"
    settings.STUDIO_LORAS_DIR = settings.STUDIO_MODELS_DIR / "lora"


@pytest.fixture(autouse=True)
def fresh_login_allowance():
    """Failed log-ins are counted in Redis, which test runs share: start each test without
    the counts earlier tests (or another run on this machine) left for the people here."""
    from studio.login_throttle import login_throttle_clear

    for name in ("alice", "bob", "carol", "admin"):
        login_throttle_clear(username=name, address="127.0.0.1")


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", "alice@example.com", PASSWORD)


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", "bob@example.com", PASSWORD)


@pytest.fixture
def carol(django_user_model):
    return django_user_model.objects.create_user("carol", "carol@example.com", PASSWORD)


@pytest.fixture
def admin(django_user_model):
    return django_user_model.objects.create_superuser("admin", "admin@example.com", PASSWORD)


@pytest.fixture
def team(alice, bob):
    """alice's team, with bob as a member."""
    from studio import services

    team = services.team_create(owner=alice, name="Shapes")
    services.team_add_member(team=team, actor=alice, username="bob")
    return team


def run_async(coro):
    """Run a coroutine to completion in a thread of its own, whatever loop this one has."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def job_finished(job, timeout: float = 120):
    """Wait until a job (run by a real worker) finishes, and return it read anew."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.is_finished:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job.pk} still {job.status} after {timeout}s")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A tiny Stable-Diffusion-style model (tests/generation/conftest.py builds it), saved as a
    model directory as real models are."""
    from diffusers import StableDiffusionPipeline

    from tests.generation.conftest import tiny_components

    path = tmp_path_factory.mktemp("tiny-model")
    StableDiffusionPipeline(**tiny_components()).save_pretrained(path, safe_serialization=True)
    return str(path)


@pytest.fixture
def tiny(settings, tiny_model) -> str:
    """The tiny model registered as "tiny"; its char tokenizer reads at most 22 letters."""
    settings.STUDIO_MODELS = {**settings.STUDIO_MODELS, "tiny": tiny_model}
    return "tiny"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """Studio's real ASGI app under uvicorn, in a thread of the test process, so it shares
    the test database (tests using it need `transactional_db` to see each other's rows)."""

    def __init__(self):
        from studio.asgi import application

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            application, host="127.0.0.1", port=self.port, ws="websockets-sansio",
            lifespan="off", log_level="warning",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the live server did not start")
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def studio_server(transactional_db):
    server = LiveServer()
    server.start()
    yield server
    server.stop()


def database_url() -> str:
    """The URL of the database the tests use (pytest-django's test_ copy)."""
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


# The name a test worker's Postgres connections carry (libpq reads PGAPPNAME), so a test can
# pick them out in pg_stat_activity.
WORKER_APPNAME = "studio-test-worker"


class Worker:
    """A real `celery worker` process on the real Redis, pointed at the test database."""

    def __init__(self, celery: tuple[str, ...] = (sys.executable, "-m", "celery"),
                 env: dict | None = None, cwd: Path = ROOT, label: str = ""):
        self.celery = celery  # the command that runs Celery's own command line
        self.env = env or {}  # settings of its own, as environment variables
        # Its working directory: another than the project's plays a worker on another host
        # (Studio is installed, so it imports from anywhere).
        self.cwd = cwd
        self.queues = f"{settings.STUDIO_QUEUE},maintenance,celery"
        self.proc: subprocess.Popen | None = None
        # A label tells apart the workers one test runs side by side.
        own = f"{os.getpid()}-{label}" if label else str(os.getpid())
        self.log = ROOT / ".run" / f"test-worker-{own}.log"
        self.name = f"test-{own}@{socket.gethostname()}"  # Celery's node name for it

    def start(self):
        self.log.parent.mkdir(exist_ok=True)
        env = dict(
            os.environ, DATABASE_URL=database_url(), STUDIO_QUEUE=settings.STUDIO_QUEUE,
            HF_HUB_OFFLINE="1", PGAPPNAME=WORKER_APPNAME, **self.env,
        )
        cmd = [
            *self.celery, "-A", "studio", "worker", "--loglevel=INFO",
            "--concurrency=1", "--prefetch-multiplier=1", f"--queues={self.queues}",
            "--without-gossip", "--without-mingle", f"--hostname={self.name}",
        ]
        with self.log.open("wb") as out:
            # A session of its own, so a test can kill -9 the whole worker (parent and child).
            self.proc = subprocess.Popen(
                cmd, cwd=self.cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready()

    def wait_ready(self, timeout: float = 60):
        from studio.celery import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text()[-2000:]}")
            # This worker's own answer: another test run's worker on the same Redis answers a
            # ping to all, before this one is up.
            if app.control.ping(destination=[self.name], timeout=0.5):
                return
        raise RuntimeError(f"worker not ready: {self.log.read_text()[-2000:]}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def celery_worker(transactional_db):
    worker = Worker()
    worker.start()
    yield worker
    worker.stop()


class BrokerQueue:
    """The generation queue in the real Redis broker, emptied around a test."""

    def __init__(self):
        from redis import Redis

        self.redis = Redis.from_url(settings.CELERY_BROKER_URL)
        self.name = settings.STUDIO_QUEUE

    def clear(self):
        self.redis.delete(self.name)

    def backlog(self) -> int:
        from generation.workers import broker_backlog

        return broker_backlog()


@pytest.fixture
def celery_queue():
    broker = BrokerQueue()
    broker.clear()
    yield broker
    broker.clear()


# --- Media in an S3-compatible store (tests/s3_server.py) ---------------------------------

S3_BUCKET = "studio-test"


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on loopback, holding the bucket Studio is pointed at. The test makes
    the bucket, as an operator would: Studio never creates one."""
    server = S3Server()
    server.start()
    server.create_bucket(S3_BUCKET)
    yield server
    server.stop()


@dataclass
class S3Media:
    server: S3Server
    bucket: str
    env: dict  # what points a worker or server process at the store
    media_root: Path  # this process's MEDIA_ROOT, which must stay empty

    def objects(self, prefix: str = "") -> list[str]:
        """The keys in the bucket under `prefix`, sorted."""
        return self.server.keys(self.bucket, prefix)

    def read(self, key: str) -> bytes:
        return self.server.read(self.bucket, key)


@pytest.fixture
def s3_media(settings, s3_server, tmp_path) -> S3Media:
    """This process (and a live server in it) keeps media in the S3 store for the test; its
    MEDIA_ROOT is an empty folder of its own. Workers get `env`."""
    env = s3_server.env(S3_BUCKET)
    # The bucket lives for the session: each test starts with it empty, as it checks what
    # its own jobs wrote.
    client = s3_server.client()
    for key in s3_server.keys(S3_BUCKET):
        client.delete_object(Bucket=S3_BUCKET, Key=key)
    settings.STORAGES = {**settings.STORAGES, "default": storage_setting(env)}
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()
    return S3Media(s3_server, S3_BUCKET, env, settings.MEDIA_ROOT)

"""The adversarial suite's world: one set of people and things, built once per module.

alice owns everything, every image made from an input image and a mask of hers; bob is her
teammate; carol is a stranger; admin is staff; anonymous is nobody. Every image, collection,
import and job is made directly in the database (no model runs), committed, and shared by a
module's tests: each test runs in a transaction that is rolled back, so what one test
changes, the next never sees. Sessions and API tokens are committed too, so a live server in
the same process (websockets) accepts them.
"""

import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.db import connection
from django.test import Client, override_settings
from django.utils import timezone
from PIL import Image as PILImage

from gallery import collections, moderation
from gallery.models import (
    Collection,
    CollectionItem,
    Image,
    ModerationEvent,
    PngImport,
    Report,
    Reproduction,
)
from gallery.services import prompt_vector
from generation import engine, inputs
from generation.models import InputImage, Job, Output
from studio import services
from studio.models import Team
from tests.conftest import ROOT, LiveServer, database_url, free_port

PEOPLE = ("alice", "bob", "carol", "admin")
ACTORS = (*PEOPLE, "anonymous")
FAST_HASHER = ["django.contrib.auth.hashers.MD5PasswordHasher"]
PASSWORD = "correct-horse-battery-staple"
# Frames of a whole batch, side by side, as jobs kept them before each output had its own.
BATCH_FRAME = "data:image/webp;base64,QkFUQ0hGUkFNRQ"
A1111_TEXT = (
    "a quiet harbour at dawn\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: DDIM, CFG scale: 3, Seed: 77, Size: 8x8, Model: studio-demo"
)


def png_bytes(color=(220, 40, 40), size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def recipe_for(prompt: str, seed: int, **fields) -> dict:
    return {
        "prompt": prompt, "negative_prompt": "", "sampler": "DDIM", "seed": seed,
        "model": {"name": "studio-demo", "source": "/nowhere", "hash": "ab" * 32},
        "batch_size": 1, "batch_index": 0, "steps": 4, "guidance_scale": 3.0,
        "width": 8, "height": 8, **fields,
    }


@dataclass
class World:
    """Who and what the suite attacks. Images by kind: private, team, public, hidden, and the
    two images of one batch: batch_public (published) and sibling (still private)."""

    users: dict
    tokens: dict
    sessions: dict
    team: Team
    images: dict = field(default_factory=dict)
    jobs: dict = field(default_factory=dict)
    collections: dict = field(default_factory=dict)
    imported: PngImport | None = None
    reproduction: Reproduction | None = None

    def client(self, actor: str, **headers) -> Client:
        """A test client as `actor`, by their committed session; anonymous has none. A 500
        comes back as a response, so a table reports it instead of stopping at it."""
        client = Client(raise_request_exception=False, headers=headers)
        if actor in self.sessions:
            client.cookies[settings.SESSION_COOKIE_NAME] = self.sessions[actor]
        return client

    def api(self, actor: str) -> Client:
        """A test client with `actor`'s API token, and no session; anonymous sends none."""
        headers = {"Authorization": f"Bearer {self.tokens[actor]}"} if actor in self.tokens else {}
        return Client(raise_request_exception=False, headers=headers)


def _inputs(owner) -> tuple[dict, list[InputImage]]:
    """alice's input image and mask, from which every image of hers here was made: the
    recipe's refs, and the stored rows."""
    image, ref = engine.canonical_image(png_bytes((90, 90, 90)))
    mask, mask_ref, _size = engine.canonical_mask(png_bytes((255, 255, 255)))
    stored = [inputs.store(owner=owner, png=image, sha256=ref.sha256, width=8, height=8,
                           kind="image"),
              inputs.store(owner=owner, png=mask, sha256=mask_ref.sha256, width=8, height=8,
                           kind="mask")]
    refs = {"init_image": ref.to_json(), "strength": 0.5, "mask": mask_ref.to_json()}
    return refs, stored


def _image(owner, *, prompt: str, seed: int, color, visibility="private", team=None, job=None,
           index=0, batch_size=1) -> Image:
    refs, stored = _inputs(owner)
    recipe = recipe_for(prompt, seed - index, batch_size=batch_size, batch_index=index, **refs)
    if job is None:
        job = Job.objects.create(owner=owner, recipe=recipe, status=Job.Status.SUCCEEDED,
                                 total_steps=4, step=4)
    job.inputs.add(*stored)
    output = Output.objects.create(job=job, index=index, recipe=recipe, width=8, height=8,
                                   image=ContentFile(png_bytes(color), name="x.png"))
    return Image.objects.create(
        output=output, owner=owner, visibility=visibility, team=team, prompt=prompt,
        model_name="studio-demo", sampler="DDIM", seed=seed, search=prompt_vector(prompt),
    )


def _people() -> tuple[dict, dict, dict]:
    users_model = get_user_model()
    users = {name: users_model.objects.create_user(name, f"{name}@example.com", PASSWORD)
             for name in ("alice", "bob", "carol")}
    users["admin"] = users_model.objects.create_superuser("admin", "admin@example.com",
                                                          PASSWORD)
    tokens = {name: services.token_create(user=user, name="security")[1]
              for name, user in users.items()}
    sessions = {}
    for name, user in users.items():
        client = Client()
        client.force_login(user)
        sessions[name] = client.cookies[settings.SESSION_COOKIE_NAME].value
    return users, tokens, sessions


def _images(world: World) -> None:
    alice, team = world.users["alice"], world.team
    kinds = {  # kind: (prompt, seed, colour, visibility, team)
        "private": ("private lemon", 1001, (200, 10, 10), "private", None),
        "team": ("team melon", 1002, (10, 200, 10), "team", team),
        "public": ("public apple", 1003, (10, 10, 200), "public", None),
        "hidden": ("hidden cherry", 1004, (200, 200, 10), "public", None),
    }
    for kind, (prompt, seed, color, visibility, shared) in kinds.items():
        world.images[kind] = _image(alice, prompt=prompt, seed=seed, color=color,
                                    visibility=visibility, team=shared)
        world.jobs[kind] = world.images[kind].output.job
    moderation.images_hide(images=[world.images["hidden"]], actor=world.users["admin"],
                           reason="hidden by staff")
    world.images["hidden"].refresh_from_db()
    # One batch of two: the first image published, the second still private.
    batch = Job.objects.create(
        owner=alice, recipe=recipe_for("batch grape", 1005, batch_size=2),
        status=Job.Status.SUCCEEDED, total_steps=4, step=4,
        trajectory=[{"step": step, "image": f"{BATCH_FRAME}{step}"} for step in (2, 4)],
    )
    world.jobs["batch"] = batch
    for kind, index, color, visibility in (("batch_public", 0, (30, 30, 30), "public"),
                                           ("sibling", 1, (240, 240, 240), "private")):
        world.images[kind] = _image(alice, prompt="batch grape", seed=1005 + index, color=color,
                                    visibility=visibility, job=batch, index=index, batch_size=2)


def _things(world: World) -> None:
    """Collections, an import, a running job and a reproduction, all alice's."""
    alice = world.users["alice"]
    for visibility in ("private", "team", "public"):
        collection = collections.collection_create(
            owner=alice, name=f"{visibility} shelf", visibility=visibility,
            team_id=world.team.pk if visibility == "team" else None,
        )
        CollectionItem.collect(collection, world.images.values())
        world.collections[visibility] = collection
    imported = PngImport(owner=alice, format="PNG", width=8, height=8, recipe=None,
                         parameters=A1111_TEXT, fields=engine.parse_parameters(A1111_TEXT))
    imported.file.save("upload", ContentFile(png_bytes((5, 5, 5))), save=False)
    imported.save()
    world.imported = imported
    world.jobs["running"] = Job.objects.create(
        owner=alice, recipe=recipe_for("running plum", 1007), status=Job.Status.RUNNING,
        attempt=1, total_steps=4, step=2, started_at=timezone.now(), heartbeat=timezone.now(),
    )
    rerun = Job.objects.create(owner=alice, recipe=recipe_for("public apple", 1003),
                               total_steps=4)
    world.jobs["reproduction"] = rerun
    world.reproduction = Reproduction.objects.create(job=rerun, image=world.images["public"])


def build_world() -> World:
    users, tokens, sessions = _people()
    team = services.team_create(owner=users["alice"], name="Shapes")
    services.team_add_member(team=team, actor=users["alice"], username="bob")
    world = World(users=users, tokens=tokens, sessions=sessions, team=team)
    _images(world)
    _things(world)
    return world


def clear_world() -> None:
    """Remove the world's people and all that is theirs; safe to call when half of it, or
    none of it, was made."""
    people = get_user_model().objects.filter(username__in=PEOPLE)
    images = list(Image.objects.filter(owner__in=people).values_list("pk", flat=True))
    ModerationEvent.objects.filter(image_uuid__in=images).delete()
    Team.objects.filter(memberships__user__in=people).delete()
    people.delete()  # their jobs, images, collections, imports and tokens go with them


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, tmp_path_factory):
    """The world, committed for the module; its files in a folder of its own."""
    # pytest-django makes the test database only for a session with a test marked
    # django_db; without one, this would write to the real database.
    if not connection.settings_dict["NAME"].startswith("test_"):
        raise RuntimeError("mark the module's tests django_db: there is no test database")
    overrides = override_settings(MEDIA_ROOT=tmp_path_factory.mktemp("security-media"),
                                  PASSWORD_HASHERS=FAST_HASHER)
    overrides.enable()
    try:
        with django_db_blocker.unblock():
            clear_world()
            built = build_world()
        yield built
    finally:
        with django_db_blocker.unblock():
            clear_world()
        overrides.disable()


@pytest.fixture(scope="module")
def socket_server(world):
    """Studio's ASGI app in a thread of this process, for websockets: it reads the committed
    world. Tests that use it still take `db`, which lets any thread open a connection."""
    server = LiveServer()
    server.start()
    yield server
    server.stop()


def counts() -> dict[str, int]:
    """How many of each thing a request could queue or store."""
    models = (Job, Output, Image, PngImport, Collection, Report, Reproduction, InputImage)
    return {model.__name__: model.objects.count() for model in models}


def error_text(response) -> str:
    """Everything a response says about what was wrong: a JSON body as it is, or the error
    messages an HTML page shows (after a redirect, the page it leads to)."""
    content = response.content.decode("utf-8", errors="replace")
    if response.get("Content-Type", "").startswith("application/json"):
        return json.dumps(response.json())
    return content


class ServerProcess:
    """Studio under uvicorn in a process of its own, on the test database: a request that
    holds the interpreter (a regex backtracking for hours) stalls that process, never the
    test that measures it, and is killed with it."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.env: dict = {}
        self.log = ROOT / ".run" / f"test-security-server-{self.port}.log"

    def start(self, env: dict) -> None:
        self.env = env
        self.log.parent.mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", "uvicorn", "studio.asgi:application", "--host",
               "127.0.0.1", "--port", str(self.port), "--lifespan", "off", "--log-level",
               "warning"]
        full_env = dict(os.environ, DATABASE_URL=database_url(), HF_HUB_OFFLINE="1", **env)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready()

    def answers(self, timeout: float) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=timeout) as answer:
                return answer.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            if self.answers(timeout=2):
                return
            time.sleep(0.2)
        raise RuntimeError(f"server not ready: {self.log.read_text()[-2000:]}")

    def ensure_alive(self) -> None:
        """A fresh server if an earlier request left this one stalled."""
        if not self.answers(timeout=2):
            self.stop()
            self.start(self.env)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # a stalled server would not answer a polite request
            self.proc.wait()
        self.log.unlink(missing_ok=True)



"""The forward-process panel of /learn/ as queued work: a picture noised to 46 timesteps in
one step each and decoded with the model's VAE (engine/forward_process.py), run by a GPU
worker, never by the web process (docs/architecture.md §1).

- **One computation per (user, model, source, seed)**, found again for an hour: the Django
  cache maps that key to a computation id. Asking again while it waits, runs or is done
  answers with it; asking again after it failed starts it anew.
- **One in flight per user.** A request for another picture replaces one that has not
  started (it is marked superseded, and its message does nothing), and is refused with 429
  while one runs.
- **State in Redis**, under the computation id, shared by the web and the worker (the
  broker's Redis, as generation/workers.py reads it; the Django cache's keys are the web's
  own, and a test run's carry a prefix its worker does not know): no entry yet means it
  waits in the queue (or its worker loads the model); once the model is loaded the worker
  claims it with SET NX (so a superseded one, or a message delivered twice, does nothing),
  says after each frame how many it has decoded, and ends it done (the frames as WebP data:
  URLs) or failed (the reason). Entries expire with the cache's key.
- **Sources**: the demo model's own kind of picture (a red circle on blue, drawn by its
  dataset code), one of the user's images (an Output of their jobs), or an upload, checked
  and stored as img2img's inputs are (generation/request_images.py, inputs.py).
"""

import functools
import json
import logging
import time
import uuid
from dataclasses import dataclass

import redis
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from studio.celery import app
from studio.services import user_lock

from . import engine, inputs, learn, registry, worker_registry
from .job_request import Refused
from .models import InputImage, Output
from .request_images import ImageData, typed

log = logging.getLogger(__name__)

FORWARD_TASK = "generation.learn_forward"
# How long a computation is found again, and its frames kept.
KEEP_SECONDS = 3600
# A running computation says how far it got after each frame; without word for this long its
# worker is presumed dead, and its user may start another.
RUNNING_SECONDS = 300
STATE_KEY = "studio:learn:forward:{}"
# The demo model's kind of picture: a caption of its dataset, drawn from its seed.
DEMO_PICTURE = ("red", "circle", "blue")
WAITING, RUNNING, DONE, FAILED, SUPERSEDED = "queued", "running", "done", "failed", "superseded"


class PictureGone(Exception):
    """The image or upload chosen is no longer the user's (deleted since)."""


@dataclass(frozen=True)
class Source:
    """The picture x₀: ``demo``, ``image:<output id>`` or ``upload:<sha256>``."""

    kind: str
    ident: str = ""

    @property
    def token(self) -> str:
        return self.kind if self.kind == "demo" else f"{self.kind}:{self.ident}"

    @classmethod
    def parse(cls, text: str) -> "Source":
        """ValueError for anything but the three forms (ids checked for shape only)."""
        kind, _, ident = str(text)[:80].partition(":")
        if kind == "demo" and not ident:
            return cls("demo")
        if kind == "image":
            return cls("image", str(uuid.UUID(ident)))
        if kind == "upload" and len(ident) == 64 and all(c in "0123456789abcdef" for c in ident):
            return cls("upload", ident)
        raise ValueError(text)


@dataclass(frozen=True)
class Forward:
    """One computation as a request names it, its fields checked (``forward_request``)."""

    user_id: int
    model: str
    model_source: str
    source: Source
    seed: int

    @property
    def key(self) -> str:
        return f"learn:forward:{self.user_id}:{self.model}:{self.source.token}:{self.seed}"


def forward_request(*, user, data, upload=None, starting: bool = True) -> Forward:
    """The request's model, source and seed, each checked (Refused names the field); an
    upload (the ``image`` file) is stored for the user and becomes the source. Only a start
    checks that the picture is still the user's: reading a state reads only their own."""
    model = str(data.get("model") or registry.default_name())[:200]
    model_source = registry.models().get(model)
    if model_source is None:
        raise Refused({"model": f"There is no model called {model!r}."})
    if refusal := worker_registry.refusal(model):  # as job submit refuses (services.py)
        raise Refused({"model": refusal})
    try:
        seed = int(str(data.get("seed") or 0)[:30])
    except (TypeError, ValueError):
        raise Refused({"seed": "The seed must be a whole number."}) from None
    if not 0 <= seed <= engine.SEED_MAX:
        raise Refused({"seed": f"The seed must be from 0 to {engine.SEED_MAX}."})
    source = _stored_upload(user, upload) if upload is not None else _source(user, data,
                                                                             starting)
    return Forward(user.pk, model, model_source, source, seed)


def _source(user, data, starting: bool) -> Source:
    try:
        source = Source.parse(data.get("source") or "demo")
    except ValueError:
        raise Refused({"source": "Choose one of your images, the demo picture, or upload one."}) \
            from None
    if starting and source.kind != "demo" and not _mine(user, source).exists():
        raise Refused({"source": "You have no such image."})
    return source


def _mine(user, source: Source):
    """The stored picture the source names, among the user's own."""
    if source.kind == "image":
        return Output.objects.filter(job__owner=user, pk=source.ident)
    return InputImage.objects.filter(owner=user, sha256=source.ident)


def _stored_upload(user, upload) -> Source:
    """The upload checked as an img2img input is (its size before it is read, its pixels'
    count from its header) and kept as the user's input image, once per picture. Not while
    another of theirs runs: it would be refused after the upload was stored."""
    if _running(_busy(user.pk)):
        raise _one_at_a_time()
    try:
        image = typed(ImageData, upload)
        png, sha256 = image.png, image.sha256
    except ValueError as exc:  # UnreadableImage too
        raise Refused({"image": str(exc)}) from None
    with transaction.atomic():
        user_lock(user)  # inputs.store's rule: one row per owner and picture
        inputs.store(owner=user, png=png, sha256=sha256, width=image.width,
                     height=image.height, kind=InputImage.Kind.IMAGE)
    return Source("upload", sha256)


# --- Starting and reading, in the web process ---------------------------------------------


def forward_start(request: Forward) -> dict:
    """The computation's state, started now unless it waits, runs or is done already.
    Refused (429) while another of the user's runs."""
    found = cache.get(request.key)
    if found is not None:
        state = _state(found["id"])
        if state is None or state["status"] in (RUNNING, DONE):
            return _present(request, found, state)
    _make_room(request.user_id)
    pointer = {"id": uuid.uuid4().hex, "queued": time.time()}
    cache.set(request.key, pointer, KEEP_SECONDS)
    cache.set(_busy_key(request.user_id), pointer["id"], KEEP_SECONDS)
    message = {"computation": pointer["id"], "user_id": request.user_id, "model": request.model,
               "model_source": request.model_source, "source": request.source.token,
               "seed": request.seed}
    # Sent by name, on this deployment's queue, as services.dispatch sends jobs.
    transaction.on_commit(lambda: app.send_task(
        FORWARD_TASK, kwargs=message, queue=settings.STUDIO_QUEUE, ignore_result=True))
    return _present(request, pointer, None)


def forward_state(request: Forward) -> dict:
    """The computation's state; status ``none`` when it was never started or has expired."""
    found = cache.get(request.key)
    if found is None:
        return {"status": "none"}
    return _present(request, found, _state(found["id"]))


def _make_room(user_id: int) -> None:
    """The user's computation in flight, if any, replaced when it has not started."""
    busy = _busy(user_id)
    if busy is None or _claim(busy, {"status": SUPERSEDED}, KEEP_SECONDS):
        return  # none, or it had not started: its message will find it superseded
    if _running(busy):
        raise _one_at_a_time()


def _busy_key(user_id: int) -> str:
    return f"learn:forward:{user_id}:busy"


def _busy(user_id: int) -> str | None:
    """The id of the user's latest computation, whatever its state."""
    return cache.get(_busy_key(user_id))


def _running(computation: str | None) -> bool:
    state = _state(computation) if computation else None
    return state is not None and state["status"] == RUNNING


def _one_at_a_time() -> Refused:
    return Refused({"source": "Your other forward process is being computed; this one "
                              "starts when it ends."}, retry_after=3)


def _present(request: Forward, pointer: dict, state: dict | None) -> dict:
    state = state or {"status": WAITING, "waiting": round(time.time() - pointer["queued"])}
    return {**state, "model": request.model, "source": request.source.token, "seed": request.seed}


# --- The state in Redis, shared with the worker ---------------------------------------------


@functools.cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


def _state(computation: str) -> dict | None:
    raw = _redis().get(STATE_KEY.format(computation))
    return json.loads(raw) if raw else None


def _claim(computation: str, state: dict, seconds: int) -> bool:
    """Set the state, kept `seconds`, if it has none yet: the first of the worker and a
    replacing request wins."""
    return bool(_redis().set(STATE_KEY.format(computation), json.dumps(state), nx=True,
                             ex=seconds))


def _put(computation: str, state: dict, seconds: int) -> None:
    _redis().set(STATE_KEY.format(computation), json.dumps(state), ex=seconds)


# --- Running it, on a GPU worker --------------------------------------------------------------


@shared_task(name=FORWARD_TASK, ignore_result=True)
def forward_process(*, computation: str, user_id: int, model: str, model_source: str,
                    source: str, seed: int) -> str:
    """Compute one forward process (``forward_run``); its state is its result."""
    return forward_run(computation=computation, user_id=user_id, model=model,
                       model_source=model_source, source=source, seed=seed)


def forward_run(*, computation: str, user_id: int, model: str, model_source: str,
                source: str, seed: int) -> str:
    """1. Nothing to do when it was superseded (or is another delivery's). 2. Read the
       picture and load the model's pipeline, from this worker's cache as jobs do. 3. Claim
       it. 4. Noise and decode it at the panel's timesteps, saying after each frame how many
       are done (``running`` lapses RUNNING_SECONDS after the last word, so a worker that
       died does not hold its user's turn for long). 5. Keep the frames, or why it failed."""
    if _state(computation) is not None:
        return "not claimed"
    claimed = False
    try:
        picture = _picture(user_id, Source.parse(source))
        device, dtype = registry.device()
        pipe = engine.load_pipeline(model_source, device=device, dtype=dtype,
                                    **registry.model_memory())
        claimed = _claim(computation, _progress(0, 0), RUNNING_SECONDS)
        if not claimed:
            return "not claimed"
        state = _frames(computation, pipe, picture, seed)
    except Exception as exc:  # every failure ends it, with its reason kept
        log.exception("forward process %s of %s failed", computation, model)
        state = {"status": FAILED, "error": failure_reason(exc)}
    if claimed:
        _put(computation, state, KEEP_SECONDS)
    else:  # failed before its claim: unless it was superseded meanwhile
        _claim(computation, state, KEEP_SECONDS)
    return state["status"]


def _progress(done: int, total: int) -> dict:
    return {"status": RUNNING, "done": done, "total": total}


def _frames(computation: str, pipe, picture, seed: int) -> dict:
    """The done state: each frame's t, ᾱ_t and picture, and where the strip's are."""
    timesteps, strip = learn.forward_timesteps(len(engine.scheduler_alpha_bars(pipe)))
    frames = engine.forward_frames(
        pipe, picture, timesteps=timesteps, seed=seed, threads=registry.threads(),
        on_frame=lambda done, total: _put(computation, _progress(done, total), RUNNING_SECONDS))
    return {
        "status": DONE, "steps": frames.train_steps, "size": frames.size, "strip": strip,
        "seconds": round(frames.seconds, 2),
        "frames": [{"t": t, "alpha_bar": a, "image": engine.frame_data_url(image)} for t, a, image
                   in zip(frames.timesteps, frames.alpha_bars, frames.images, strict=True)],
    }


def _picture(user_id: int, source: Source):
    """x₀ as a PIL image, read again here: the image or upload must still be the user's."""
    if source.kind == "demo":
        import numpy as np
        from PIL import Image

        from .demo_model import dataset

        picture = dataset.render(dataset.Triple(*DEMO_PICTURE), np.random.default_rng(dataset.SEED))
        return Image.fromarray(picture)
    found = _mine(user_id, source).first()
    if found is None:
        raise PictureGone
    stored = found.image if source.kind == "image" else found.file
    with stored.open("rb") as file:
        return engine.open_input(file.read())


def failure_reason(exc: Exception) -> str:
    """What went wrong, in words for the person who asked."""
    if isinstance(exc, SoftTimeLimitExceeded):
        return f"It took longer than the {settings.CELERY_TASK_SOFT_TIME_LIMIT} s time limit."
    if isinstance(exc, PictureGone):
        return "The picture is no longer stored: it was deleted since it was chosen."
    if isinstance(exc, engine.InputError):
        return f"The picture {exc}."
    if isinstance(exc, engine.ModelLoadError):
        return f"The model could not be loaded: {exc}"
    if type(exc).__name__ == "OutOfMemoryError":
        return "The GPU ran out of memory."
    return f"The forward process failed ({type(exc).__name__}): {exc}"

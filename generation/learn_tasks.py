"""The forward-process panel of /learn/ as queued work: a picture noised to 46 timesteps in
one step each and decoded with the model's VAE (engine/forward_process.py), run by a GPU
worker, never by the web process (docs/architecture.md §3.6).

- **One computation per (user, model, source, seed)**, found again for an hour: the Django
  cache maps that key to a computation id. Asking again while it waits, runs or is done
  answers with it; asking again after it failed starts it anew.
- **A start per request, at most STUDIO_MAX_SUBMITS_PER_MINUTE a minute** (the jobs'
  allowance), counted before anything sent is read: a refusal is a 429 with Retry-After.
- **One in flight per user, one message in the queue per user.** A request for another
  picture replaces one that has not started (it is marked superseded) and is refused with
  429 while one runs. The user's latest wish is kept beside their one waiting message, which
  computes whatever is wanted when a worker takes it (generation/learn_states.py).
- **State in Redis**, under the computation id, shared by the web and the worker
  (learn_states.py): no entry yet means it waits in the queue (or its worker loads the
  model); once the model is loaded the worker claims it with SET NX, says after each frame
  how many it has decoded, and ends it done (the frames as WebP data: URLs) or failed (the
  reason). A worker that falls silent fails it (learn_states.RUNNING_SECONDS).
- **Models per worker**: a worker loads its own copy of the model when the web server's
  path is not on its host, as jobs do (runner._recipe); one that has no copy passes the
  message on to the workers that list the model, or fails it saying why.
- **Sources**: the demo model's own kind of picture (a red circle on blue, drawn by its
  dataset code), one of the user's images (an Output of their jobs), or an upload, checked
  and stored as img2img's inputs are (generation/request_images.py, inputs.py).
"""

import logging
import math
import time
import uuid
from dataclasses import dataclass

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from studio.celery import app
from studio.services import user_lock

from . import claims, engine, inputs, learn, registry, worker_registry
from . import learn_states as states
from .job_request import Refused
from .models import InputImage, Output
from .request_images import ImageData, typed

log = logging.getLogger(__name__)

FORWARD_TASK = "generation.learn_forward"
KEEP_SECONDS = states.KEEP_SECONDS
# The demo model's kind of picture: a caption of its dataset, drawn from its seed.
DEMO_PICTURE = ("red", "circle", "blue")


class PictureGone(Exception):
    """The image or upload chosen is no longer the user's (deleted since)."""


class ModelNotHere(Exception):
    """Neither this worker nor another that is up can load the model."""


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


def forward_allowed(user) -> None:
    """Count a start; Refused (429) past the jobs' allowance a minute. Call it before the
    request is read: an upload is decoded and stored, and a start may send a message."""
    per_minute = settings.STUDIO_MAX_SUBMITS_PER_MINUTE
    minute, left = _minute()
    key = f"learn:forward-starts:{user.pk}:{minute}"
    cache.add(key, 0, timeout=120)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between the two calls
        count = 1
        cache.set(key, count, timeout=120)
    if count > per_minute:
        raise Refused({"__all__": f"You asked for more than {per_minute} forward processes "
                                  f"this minute (the limit). Try again in {left} s."},
                      retry_after=left)


def _minute() -> tuple[int, int]:
    """This minute's number, and the whole seconds left in it (at least 1)."""
    now = time.time()
    return int(now // 60), max(math.ceil(60 - now % 60), 1)


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
    if states.running(_busy(user.pk)):
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
    """The computation's state, started now unless it waits, runs or is done already: it
    becomes the user's wanted one, and a message is sent unless one of theirs waits in the
    queue already (it will compute this one). Refused (429) while another of theirs runs."""
    found = cache.get(request.key)
    if found is not None:
        state = states.state(found["id"])
        if state is None or state["status"] in (states.RUNNING, states.DONE):
            return _present(request, found, state)
    busy = _busy(request.user_id)
    if not states.supersede(busy) and states.running(busy):
        raise _one_at_a_time()
    pointer = {"id": uuid.uuid4().hex, "queued": time.time()}
    cache.set(request.key, pointer, KEEP_SECONDS)
    wish = {"computation": pointer["id"], "user_id": request.user_id, "model": request.model,
            "model_source": request.model_source, "source": request.source.token,
            "seed": request.seed}
    if states.want(request.user_id, wish):
        # On commit: the worker reads an upload stored in this request's transaction.
        transaction.on_commit(lambda: _send(request.user_id, pointer["id"]))
    return _present(request, pointer, None)


def forward_state(request: Forward) -> dict:
    """The computation's state; status ``none`` when it was never started or has expired."""
    found = cache.get(request.key)
    if found is None:
        return {"status": "none"}
    return _present(request, found, states.state(found["id"]))


def _send(user_id: int, computation: str, countdown: float | None = None) -> None:
    """The user's one message, by name, on this deployment's queue (as services.dispatch
    sends jobs). `computation`: the wish it was sent for, shown with the task; the worker
    computes the wish current when it runs, which may be a later one."""
    app.send_task(FORWARD_TASK, kwargs={"user_id": user_id, "computation": computation},
                  queue=settings.STUDIO_QUEUE, ignore_result=True, countdown=countdown)


def _busy(user_id: int) -> str | None:
    """The id of the user's latest computation, whatever its state."""
    wish = states.wanted(user_id)
    return wish["computation"] if wish else None


def _one_at_a_time() -> Refused:
    return Refused({"source": "Your other forward process is being computed; this one "
                              "starts when it ends."}, retry_after=3)


def _present(request: Forward, pointer: dict, state: dict | None) -> dict:
    state = state or {"status": states.WAITING, "waiting": round(time.time() - pointer["queued"])}
    state = {key: value for key, value in state.items() if key != "at"}
    return {**state, "model": request.model, "source": request.source.token, "seed": request.seed}


# --- Running it, on a GPU worker --------------------------------------------------------------


@shared_task(name=FORWARD_TASK, ignore_result=True)
def forward_process(*, user_id: int, computation: str = "", **_earlier) -> str:
    """Compute the user's wanted forward process (``forward_run``); its state is its result.
    `computation` (the wish it was sent for) and `_earlier` (the fields a message carried
    before wishes were kept) are not read."""
    return forward_run(user_id=user_id)


def forward_run(*, user_id: int) -> str:
    """1. Take the user's message: compute what they want now, nothing if another delivery
       claimed it or a newer wish superseded it. 2. Find the model on this worker, or pass
       the message on to a worker that has it. 3. Read the picture, load the model's pipeline
       (from this worker's cache, as jobs do) and claim it. 4. Noise and decode it at the
       panel's timesteps, saying after each frame how many are done. 5. Keep the frames, or
       why it failed."""
    wish = states.take(user_id)
    if wish is None or states.state(wish["computation"]) is not None:
        return "not claimed"
    computation, model = wish["computation"], wish["model"]
    claimed = False
    try:
        model_source = _model_source(model, wish["model_source"])
        if model_source is None:
            if _pass_on(user_id, computation, model):
                return "passed on"
            raise ModelNotHere(model)
        picture = _picture(user_id, Source.parse(wish["source"]))
        device, dtype = registry.device()
        pipe = engine.load_pipeline(model_source, device=device, dtype=dtype,
                                    **registry.model_memory())
        claimed = states.claim(computation, states.progress(0, 0))
        if not claimed:
            return "not claimed"
        state = _frames(computation, pipe, picture, wish["seed"])
    except Exception as exc:  # every failure ends it, with its reason kept
        log.exception("forward process %s of %s failed", computation, model)
        state = {"status": states.FAILED, "error": failure_reason(exc)}
    if claimed:
        states.put(computation, state)
    else:  # failed before its claim: unless it was superseded meanwhile
        states.claim(computation, state)
    return state["status"]


def _model_source(model: str, source: str) -> str | None:
    """Where this worker loads the model from: the web server's source when this host has
    it, else this worker's own copy of that name (as runner._recipe does for jobs); None
    when it has neither."""
    if worker_registry.loadable(source):
        return source
    own = registry.models().get(model)
    return own if own is not None and worker_registry.loadable(own) else None


def _pass_on(user_id: int, computation: str, model: str) -> bool:
    """Send the user's message on, after claims.PASS_ON_SECONDS, when another worker taking
    jobs lists the model (as claims.pass_on does for jobs); True if it is theirs to run."""
    served = claims.claim_filter()
    if served is None or model not in served.theirs:
        return False
    if states.send_again(user_id, computation):
        _send(user_id, computation, countdown=claims.PASS_ON_SECONDS)
    return True


def _frames(computation: str, pipe, picture, seed: int) -> dict:
    """The done state: each frame's t, ᾱ_t and picture, and where the strip's are."""
    timesteps, strip = learn.forward_timesteps(len(engine.scheduler_alpha_bars(pipe)))
    frames = engine.forward_frames(
        pipe, picture, timesteps=timesteps, seed=seed, threads=registry.threads(),
        on_frame=lambda done, total: states.put(computation, states.progress(done, total)))
    return {
        "status": states.DONE, "steps": frames.train_steps, "size": frames.size,
        "strip": strip, "seconds": round(frames.seconds, 2),
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
    if isinstance(exc, ModelNotHere):
        return (f"No worker that is up can load the model “{exc}”: the one that took this "
                "does not have it, and none that has it takes work now.")
    if isinstance(exc, engine.InputError):
        return f"The picture {exc}."
    if isinstance(exc, engine.ModelLoadError):
        return f"The model could not be loaded: {exc}"
    if type(exc).__name__ == "OutOfMemoryError":
        return "The GPU ran out of memory."
    return f"The forward process failed ({type(exc).__name__}): {exc}"

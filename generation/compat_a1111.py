"""AUTOMATIC1111's web UI API, so the clients people have (`webuiapi`, Open WebUI, bots, editor
plugins) use Studio unchanged (docs/architecture.md §6): `POST /sdapi/v1/txt2img`, `GET` and
`POST /sdapi/v1/options`, `GET /sdapi/v1/samplers`, `/schedulers`, `/sd-models`, `/loras`,
`/progress` and `/scripts`, and `POST /sdapi/v1/refresh-checkpoints`, `/refresh-loras`,
`/interrupt` and `/skip`. img2img, the upscalers and png-info are in
generation/compat_a1111_images.py, on this API.

- A txt2img call is one ordinary job: the generate page's validation and per-user limits apply
  and its images land in the caller's gallery. `batch_size × n_iter` images run as one job of
  that batch size (at most 8): seeds are numbered `seed + i` as A1111 numbers them, and one
  job takes one queue slot and one limit check, all or nothing. (A1111 runs `n_iter` batches
  in turn; the pixels of a bigger batch differ by at most one 8-bit level, docs/architecture.md §4.)
- The request is translated to Studio's one request in generation/a1111_request.py. Clients
  send every field A1111 knows on every call. A field of a feature Studio lacks is accepted
  at a value that leaves the feature off (`OFF` there) and refused otherwise, by name;
  fields Studio has never heard of are ignored, as A1111 ignores them.
- Hires fix: `enable_hr` with `hr_scale` (or `hr_resize_x`/`hr_resize_y` in proportion),
  `hr_second_pass_steps`, `denoising_strength` and `hr_upscaler` (engine.UPSCALERS; A1111's
  "Latent" by default); a second sampler, model or prompt for the hires pass is refused by
  name (a1111_request.hires_params).
- `interrupt` and `skip` stop the caller's own running job, never another user's: A1111 has
  one job at a time, so "the current job" is here the caller's (the one `progress` shows).
- Models: `sd-models` lists every model (generation.registry) with A1111's title, `name
  [hash10]`, or just `name` while no worker has hashed its weights: a request never hashes.
  `POST /options` with `sd_model_checkpoint` (a title or a name) sets the caller's own model,
  which their txt2img calls use when they name none; A1111 sets the server's, which here would
  let one user change another's images. Nothing of a server path is shown: a model's
  `filename` and a LoRA's `path` are the name with its extension.
- Auth: HTTP Basic with the username and an API token (A1111's `--api-auth`), or Bearer, on
  every endpoint: the options are per user, so there is no anonymous caller.
- Errors: 422 for a request that cannot run, as A1111's FastAPI answers, with
  `{"detail": message, "errors": {field: message}}` naming A1111's fields; 413 for a body
  over DATA_UPLOAD_MAX_MEMORY_SIZE.
"""

from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from studio.api import (
    JsonParser,
    TokenBasic,
    TokenBearer,
    body_too_big,
    read_body,
    validation_errors,
)

from . import a1111_request, compat_a1111_images, engine, recipes, registry, selectors, services
from .a1111_jobs import A1111Error, default_model, images_answer, own_model
from .a1111_request import ALIASES, SCHEDULERS, OptionsIn, Txt2ImgIn
from .job_request import Refused
from .models import DefaultModel, Job

api = NinjaAPI(
    title="AUTOMATIC1111-compatible API", version="1", urls_namespace="a1111",
    openapi_url=None, docs_url=None, auth=[TokenBasic(), TokenBearer()], parser=JsonParser(),
)


@api.exception_handler(A1111Error)
def _a1111_error(request: HttpRequest, exc: A1111Error) -> HttpResponse:
    detail = "; ".join(
        message if field == "__all__" else f"{field}: {message}"
        for field, message in exc.errors.items()
    )
    body = {"detail": detail, "errors": exc.errors}
    response = api.create_response(request, body, status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return response


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    return _a1111_error(request, A1111Error(422, validation_errors(exc)))


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return _a1111_error(request, A1111Error(413, {"body": body_too_big()}))


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    message = "Send your username and an API token with HTTP Basic auth, or a Bearer token."
    headers = {"WWW-Authenticate": 'Basic realm="Studio"'}
    return _a1111_error(request, A1111Error(401, {"__all__": message}, headers))


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return _a1111_error(request, A1111Error(exc.status_code, {"__all__": exc.message}))


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return _a1111_error(request, A1111Error(404, {"__all__": "Not found."}))


# --- Answering ----------------------------------------------------------------------------


@sync_to_async
def read_and_submit(request: HttpRequest) -> tuple[Txt2ImgIn, Job]:
    """Read, translate, validate and queue, in a thread: CPU work on the caller's data.
    A refusal is a 422 (429 over a limit) naming A1111's fields."""
    body = read_body(request, Txt2ImgIn)
    try:
        studio_request = a1111_request.studio_request(body, default_model(request.auth, body))
        return body, recipes.submit(user=request.auth, request=studio_request)
    except Refused as exc:
        errors = a1111_request.a1111_errors(exc, body)
        raise A1111Error(exc.status(422), errors, exc.headers) from exc


@api.post("/txt2img")
async def txt2img(request: HttpRequest):
    """Make the images and answer when they exist: an async view, so the wait holds no
    thread (generation/waiting.py). The body is Txt2ImgIn, read by read_and_submit."""
    body, job = await read_and_submit(request)
    # Not the scripts or unknown fields: whatever was sent, encoded on the event loop.
    parameters = body.model_dump(exclude={"alwayson_scripts", *(body.model_extra or ())})
    return await images_answer(job, send_images=body.send_images, parameters=parameters)


@api.get("/progress")
def progress(request: HttpRequest):
    """How far the caller's most recent running job is, with its latest step's preview as
    `current_image` (base64 WebP, as the job's websocket sends it; docs/architecture.md §5)."""
    waiting_jobs = Job.objects.filter(owner=request.auth, status__in=[Job.Status.QUEUED,
                                                                      Job.Status.RUNNING])
    job = waiting_jobs.filter(status=Job.Status.RUNNING).order_by("-started_at").first()
    state = {"skipped": False, "interrupted": False, "stopping_generation": False,
             "job": "", "job_count": waiting_jobs.count(), "job_timestamp": "0",
             "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
    answer = {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None,
              "textinfo": None}
    if job is None:
        return answer
    done = job.step / job.total_steps if job.total_steps else 0.0
    elapsed = (timezone.now() - job.started_at).total_seconds()
    state.update(job=str(job.pk), interrupted=job.cancel_requested, sampling_step=job.step,
                 sampling_steps=job.total_steps,
                 job_timestamp=job.started_at.strftime("%Y%m%d%H%M%S"))
    answer.update(progress=done, eta_relative=elapsed / done - elapsed if done else 0.0)
    latest = selectors.job_latest_step(job)
    if latest is not None and latest.get("preview"):
        answer["current_image"] = latest["preview"].partition(",")[2]
    return answer


def running_jobs(user):
    """The caller's running jobs: what A1111 calls "the current job", the one /progress
    reports. Only ever the caller's own: on a shared server another user's job is not theirs
    to stop."""
    return Job.objects.filter(owner=user, status=Job.Status.RUNNING)


@api.post("/interrupt")
def interrupt(request: HttpRequest):
    """Stop the caller's running job within a step (services.job_cancel); their queued jobs
    wait on. The txt2img or img2img call that waits for it answers 409: a stopped job keeps
    no images, where A1111 answers with the half-made ones. Answers {}, as A1111 does."""
    for job in running_jobs(request.auth):
        services.job_cancel(job=job, actor=request.auth)
    return {}


@api.post("/skip")
def skip(request: HttpRequest):
    """A1111 skips the current image and goes on with the next batch of `n_iter`; here the
    whole request is one job, so skipping stops it, as /interrupt does. Answers null."""
    interrupt(request)


# --- What can be asked for ----------------------------------------------------------------


@api.get("/samplers")
def samplers(request: HttpRequest):
    return [
        {"name": name, "aliases": [a for a, n in ALIASES.items() if n == name], "options": {}}
        for name in engine.SAMPLERS
    ]


@api.get("/scripts")
def scripts(request: HttpRequest):
    """None: clients such as webuiapi ask, to know which extension arguments to send."""
    return {"txt2img": [], "img2img": []}


@api.get("/schedulers")
def schedulers(request: HttpRequest):
    return [
        {"name": name, "label": label, "aliases": None, "default_rho": -1,
         "need_inner_model": False}
        for name, label in SCHEDULERS.items()
    ]


# --- Models: the caller's own choice ----------------------------------------------------


def title(name: str, digest: str | None) -> str:
    """A1111's title of a checkpoint: `name [first 10 hex of its sha256]`, just the name
    while the hash is not known."""
    return f"{name} [{digest[:10]}]" if digest else name


def filename(name: str, source: str) -> str:
    """What A1111 shows as a checkpoint's path: here its name and extension, no server path."""
    suffix = registry.CHECKPOINT_SUFFIX
    return name + suffix if source.endswith(suffix) else name


def chosen_model(user) -> str:
    """The model the caller's calls use when they name none: theirs, else the server's."""
    return own_model(user) or registry.default_name()


@api.get("/sd-models")
def sd_models(request: HttpRequest):
    known = registry.models()
    hashes = registry.known_hashes(known.values())
    return [
        {"title": title(name, hashes[source]), "model_name": name,
         "hash": hashes[source] and hashes[source][:10], "sha256": hashes[source],
         "filename": filename(name, source), "config": None}
        for name, source in known.items()
    ]


@api.get("/options")
def options(request: HttpRequest):
    """The options clients read: the caller's model (as a title) among them."""
    name = chosen_model(request.auth)
    source = registry.models().get(name)
    digest = registry.known_hash(source) if source is not None else None
    return {"sd_model_checkpoint": title(name, digest), "sd_checkpoint_hash": digest,
            "samples_format": "png", "CLIP_stop_at_last_layers": 1}


@api.post("/options")
def options_set(request: HttpRequest):
    """Set the caller's own model (`sd_model_checkpoint`, a title or a name); other settings
    only at the values Studio has. Nothing is stored unless all of it is accepted. Answers
    null, as A1111 does. The body is OptionsIn."""
    body = read_body(request, OptionsIn)
    errors = a1111_request.options_errors(body, options(request))
    name = None
    if body.sd_model_checkpoint is not None:
        name = a1111_request.model_name(body.sd_model_checkpoint)
        if name not in (known := registry.models()):
            errors["sd_model_checkpoint"] = "Unknown model. Choose one of: " + ", ".join(known)
    if errors:
        raise A1111Error(422, errors)
    if name is not None:
        DefaultModel.objects.update_or_create(
            user=request.auth, defaults={"model": name, "updated": timezone.now()}
        )


@api.post("/refresh-checkpoints")
def refresh_checkpoints(request: HttpRequest):
    """Scan the models folder again (a checkpoint dropped in or removed); hashes nothing."""
    registry.refresh()
    registry.from_folder()


@api.get("/loras")
def loras(request: HttpRequest):
    """The LoRA files, as A1111 lists them; a prompt names one as <lora:name:weight>, so
    `alias` is the name too."""
    return [
        {"name": name, "alias": name, "path": name + registry.CHECKPOINT_SUFFIX,
         "metadata": registry.lora_metadata(path)}
        for name, path in registry.loras().items()
    ]


@api.post("/refresh-loras")
def refresh_loras(request: HttpRequest):
    registry.refresh()
    registry.loras()


api.add_router("", compat_a1111_images.router)

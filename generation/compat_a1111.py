"""AUTOMATIC1111's web UI API, so the clients people have (`webuiapi`, bots, editor plugins) use
Studio unchanged (docs/architecture.md §6): `POST /sdapi/v1/txt2img` and `GET /sdapi/v1/samplers`,
`/schedulers`, `/sd-models`, `/progress`, `/options` and `/scripts`.

- A txt2img call is one ordinary job: the generate page's validation and per-user limits apply
  and its images land in the caller's gallery. `batch_size × n_iter` images run as one job of
  that batch size (at most 8): seeds are numbered `seed + i` as A1111 numbers them, and one
  job takes one queue slot and one limit check, all or nothing. (A1111 runs `n_iter` batches
  in turn; the pixels of a bigger batch differ by at most one 8-bit level, docs/architecture.md §4.)
- Clients send every field A1111 knows on every call. A field of a feature Studio lacks is
  accepted at a value that leaves the feature off (`OFF`) and refused otherwise, by name;
  fields Studio has never heard of are ignored, as A1111 ignores them.
- Auth: HTTP Basic with the username and an API token (A1111's `--api-auth`), or Bearer.
- Errors: 422 for a request that cannot run, as A1111's FastAPI answers, with
  `{"detail": message, "errors": {field: message}}` naming A1111's fields; 413 for a body
  over DATA_UPLOAD_MAX_MEMORY_SIZE.
"""

import base64
import json
from string import hexdigits
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from pydantic import BaseModel, ConfigDict

from studio.api import (
    JsonParser,
    Text,
    TokenBasic,
    TokenBearer,
    body_too_big,
    clip,
    read_body,
    validation_errors,
)

from . import engine, recipes, registry, services, waiting
from .models import Job, Output

api = NinjaAPI(
    title="AUTOMATIC1111-compatible API", version="1", urls_namespace="a1111",
    openapi_url=None, docs_url=None, auth=[TokenBasic(), TokenBearer()], parser=JsonParser(),
)


class A1111Error(Exception):
    def __init__(self, status: int, errors: dict[str, str], headers: dict | None = None):
        super().__init__(errors)
        self.status, self.errors, self.headers = status, errors, headers or {}


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


# --- Translating a request ----------------------------------------------------------------

# Features Studio does not have: what A1111 calls them, and the values that leave them off.
OFF: dict[str, tuple[str, tuple]] = {
    "enable_hr": ("Hires fix", (False, None)),
    "restore_faces": ("Face restoration", (False, None)),
    "tiling": ("Tiling", (False, None)),
    "styles": ("Styles", ([], None)),
    "script_name": ("Scripts", (None, "")),
    "seed_resize_from_w": ("Resize seed from width", (0, -1, None)),
    "seed_resize_from_h": ("Resize seed from height", (0, -1, None)),
    "s_churn": ("Sigma churn", (0, None)),
    "s_tmin": ("Sigma tmin", (0, None)),
    "s_tmax": ("Sigma tmax", (0, None)),
    "s_noise": ("Sigma noise", (1, None)),
    "s_min_uncond": ("Negative guidance minimum sigma", (0, None)),
    # Each sampler uses its standard eta: 0 for DDIM, 1 for the ancestral ones; webuiapi
    # sends 1 on every call.
    "eta": ("Eta", (0, 1, None)),
    "refiner_checkpoint": ("Refiner", (None, "", "None")),
}
# Settings a request may override: the model (A1111's way to pick one per call) and settings
# at the value Studio always has.
OPTIONS_OFF: dict[str, tuple] = {
    "CLIP_stop_at_last_layers": (1, None),
    "sd_vae": ("Automatic", "None", None),
    "eta_noise_seed_delta": (0, None),
}
ALIASES = {"PLMS": "PNDM", "k_euler_a": "Euler a", "k_euler": "Euler", "k_lms": "LMS",
           "k_heun": "Heun", "k_dpm_2": "DPM2", "k_dpm_2_a": "DPM2 a", "ddim": "DDIM"}
# A1111 1.9 split "DPM++ 2M Karras" into sampler "DPM++ 2M" and scheduler "Karras".
SCHEDULERS = {"automatic": "Automatic", "uniform": "Uniform", "karras": "Karras"}
# Studio's recipe fields as A1111's requests name them.
FIELDS = {"guidance_scale": "cfg_scale", "sampler": "sampler_name",
          "model": "override_settings.sd_model_checkpoint"}
HEX_DIGITS = frozenset(hexdigits)


def model_name(title: str) -> str:
    """A model's name from its A1111 title, "name [hash]" (the hash in hex) or just "name".
    By splitting: a regex for the trailing hash backtracks quadratically over whitespace."""
    head, bracket, digest = title.removesuffix("]").rpartition("[")
    if title.endswith("]") and bracket and digest and set(digest) <= HEX_DIGITS:
        return head.rstrip()
    return title


# Scripts or settings one request may name; real clients send a handful.
MAX_NAMED = 32


class OverrideSettings(BaseModel):
    """The model by its title (null is refused by name); other keys must match OPTIONS_OFF."""

    model_config = ConfigDict(extra="allow")

    sd_model_checkpoint: Text = ""


class Txt2ImgIn(BaseModel):
    """The fields Studio reads; every other field is checked against OFF or ignored. A plain
    pydantic model: Ninja's Schema drops extra fields before they can be checked."""

    model_config = ConfigDict(extra="allow")

    prompt: Text = ""
    negative_prompt: Text = ""
    seed: int | None = -1
    subseed: int | None = -1
    subseed_strength: float = 0.0
    sampler_name: Text | None = None
    sampler_index: Text | None = None
    scheduler: Text | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    batch_size: int = 1
    n_iter: int = 1
    send_images: bool = True
    override_settings: OverrideSettings | None = None
    alwayson_scripts: dict[str, Any] | None = None


def script_error(script: Any) -> str | None:
    """What is wrong with an `alwayson_scripts` entry, `{"args": [...]}` or the bare list; None
    when its args are empty or start with false (A1111's "enabled")."""
    args = script.get("args") if isinstance(script, dict) else script
    if args is None:
        return None
    if not isinstance(args, list):
        return 'Send an object with an "args" list.'
    if args and args[0] is not False:
        return "Extension scripts are not supported."
    return None


def unsupported(body: Txt2ImgIn) -> dict[str, str]:
    """An error for each feature switched on that Studio lacks, and each malformed script."""
    errors = {}
    extra = body.model_extra or {}
    for field, (feature, off) in OFF.items():
        if field in extra and extra[field] not in off:
            hint = f"send {json.dumps(off[0])} or leave it out"
            errors[field] = f"{feature} is not supported; {hint}."
    scripts = body.alwayson_scripts or {}
    overrides = (body.override_settings.model_extra if body.override_settings else None) or {}
    # One error a key would make a refusal as large as the request, rendered on the loop.
    for field, named in (("alwayson_scripts", scripts), ("override_settings", overrides)):
        if len(named) > MAX_NAMED:
            errors[field] = f"At most {MAX_NAMED} entries."
    for name, script in scripts.items() if len(scripts) <= MAX_NAMED else ():
        if (error := script_error(script)) is not None:
            errors[f"alwayson_scripts.{clip(name)}"] = error
    for key, value in overrides.items() if len(overrides) <= MAX_NAMED else ():
        if value not in OPTIONS_OFF.get(key, ()):
            errors[f"override_settings.{clip(key)}"] = "This setting cannot be changed here."
    if body.n_iter < 1:
        errors["n_iter"] = "Must be 1 or more."
    return errors


def studio_sampler(body: Txt2ImgIn) -> str | None:
    """Studio's sampler for A1111's sampler and scheduler; None for Studio's default."""
    name = body.sampler_name or body.sampler_index
    scheduler = (body.scheduler or "automatic").lower()
    if scheduler not in SCHEDULERS:
        known = ", ".join(SCHEDULERS.values())
        raise A1111Error(422, {"scheduler": f"{body.scheduler!r} is not supported; use {known}."})
    if not name:
        return None
    name = ALIASES.get(name, name)
    if scheduler == "karras" and not name.endswith(" Karras"):
        if f"{name} Karras" not in engine.SAMPLERS:
            with_karras = [s.removesuffix(" Karras") for s in engine.SAMPLERS if "Karras" in s]
            raise A1111Error(422, {"scheduler": f"Karras is not available with {name}; it is "
                                                f"with {', '.join(with_karras)}."})
        name = f"{name} Karras"
    return name


def job_params(body: Txt2ImgIn) -> dict:
    """The request as the generate form's fields; A1111's -1 seeds mean random."""
    errors = unsupported(body)
    if errors:
        raise A1111Error(422, errors)
    subseed = body.subseed
    if subseed is None or subseed < 0:
        subseed = engine.random_seed() if body.subseed_strength else 0
    title = body.override_settings.sd_model_checkpoint if body.override_settings else ""
    return {
        "prompt": body.prompt, "negative_prompt": body.negative_prompt,
        "model": model_name(title) or None,
        "seed": None if body.seed is None or body.seed < 0 else body.seed,
        "subseed": subseed, "subseed_strength": body.subseed_strength,
        "sampler": studio_sampler(body), "steps": body.steps, "guidance_scale": body.cfg_scale,
        "width": body.width, "height": body.height,
        "batch_size": body.batch_size * body.n_iter,
    }


def submit(user, body: Txt2ImgIn) -> Job:
    """Validate and queue like the generate page: A1111Error names the fields at fault."""
    try:
        return services.job_submit(user=user, recipe=recipes.recipe_from_params(job_params(body)))
    except recipes.InvalidParams as exc:
        errors = {FIELDS.get(k, k): v for k, v in exc.errors.items()}
        if "batch_size" in errors and body.n_iter > 1:
            errors["batch_size"] += f" (batch_size × n_iter is {body.batch_size * body.n_iter})"
        raise A1111Error(422, errors) from exc
    except services.LimitExceeded as exc:
        raise A1111Error(429, {"__all__": str(exc)}, {"Retry-After": str(exc.retry_after)}) from exc


# --- Answering ----------------------------------------------------------------------------


def info(job: Job, outputs: list[Output]) -> dict:
    """A1111's `info`: the batch's seeds and each image's infotext (its PNG `parameters`)."""
    recipe = job.recipe
    count = len(outputs)
    # The worker completes each image's recipe with the versions that ran it.
    versions = (outputs[0].recipe.get("versions") if outputs else None) or {}
    return {
        "prompt": recipe["prompt"], "all_prompts": [recipe["prompt"]] * count,
        "negative_prompt": recipe["negative_prompt"],
        "all_negative_prompts": [recipe["negative_prompt"]] * count,
        "seed": recipe["seed"], "all_seeds": [recipe["seed"] + i for i in range(count)],
        "subseed": recipe["subseed"],
        "all_subseeds": [recipe["subseed"] + i for i in range(count)],
        "subseed_strength": recipe["subseed_strength"],
        "width": recipe["width"], "height": recipe["height"], "sampler_name": recipe["sampler"],
        "cfg_scale": recipe["guidance_scale"], "steps": recipe["steps"],
        "batch_size": recipe["batch_size"], "restore_faces": False,
        "sd_model_name": recipe["model"]["name"], "sd_model_hash": recipe["model"]["hash"][:10],
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "styles": [],
        "extra_generation_params": {}, "index_of_first_image": 0, "clip_skip": 1,
        "job_timestamp": job.queued_at.strftime("%Y%m%d%H%M%S"),
        "infotexts": [
            engine.format_parameters(engine.Recipe.from_json(o.recipe)) for o in outputs
        ],
        "version": f"studio-{versions.get('studio', '')}",
        "studio": {"job": str(job.pk), "images": [o.get_page_url() for o in outputs]},
    }


@sync_to_async
def read_and_submit(request: HttpRequest) -> tuple[Txt2ImgIn, Job]:
    """Read, translate, validate and queue, in a thread: CPU work on the caller's data."""
    body = read_body(request, Txt2ImgIn)
    return body, submit(request.auth, body)


@api.post("/txt2img")
async def txt2img(request: HttpRequest):
    """Make the images and answer when they exist: an async view, so the wait holds no
    thread (generation/waiting.py). The body is Txt2ImgIn, read by read_and_submit."""
    body, job = await read_and_submit(request)
    try:
        outputs = await waiting.wait_for_outputs(job)
    except waiting.NoImages as exc:
        raise A1111Error(exc.status, {"__all__": exc.message}) from exc
    pngs = await waiting.read_pngs(outputs) if body.send_images else []
    return {
        "images": [base64.b64encode(png).decode() for png in pngs],
        # Not the scripts or unknown fields: whatever was sent, encoded on the event loop.
        "parameters": body.model_dump(exclude={"alwayson_scripts", *(body.model_extra or ())}),
        "info": json.dumps(info(job, outputs)),
    }


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
    latest = services.job_latest_step(job)
    if latest is not None and latest.get("preview"):
        answer["current_image"] = latest["preview"].partition(",")[2]
    return answer


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


def weights_hash(source: str) -> str | None:
    """The sha256 of a model's weights, None while they cannot be read (an untrained demo)."""
    try:
        return engine.weights_hash(source)
    except engine.ModelLoadError:
        return None


@api.get("/sd-models")
def sd_models(request: HttpRequest):
    models = []
    for name, source in registry.models().items():
        digest = weights_hash(source)
        # `filename`: A1111's checkpoint path, which clients only show; ours stay private.
        models.append({"title": name, "model_name": name, "hash": digest and digest[:10],
                       "sha256": digest, "filename": name, "config": None})
    return models


@api.get("/options")
def options(request: HttpRequest):
    """The options clients read. Read-only: a call picks its model with
    `override_settings.sd_model_checkpoint`, since one user's choice must not change
    another's."""
    name = registry.default_name()
    digest = weights_hash(registry.models()[name])
    return {"sd_model_checkpoint": name, "sd_checkpoint_hash": digest,
            "samples_format": "png", "CLIP_stop_at_last_layers": 1}

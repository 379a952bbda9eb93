"""Jobs, models and samplers in Studio's API (/api/v1/). Thin: the generate page's request,
service and limits (generation/job_request.py, recipes.submit), refusals in the API's error
shape: 400 by field, 429 with Retry-After over a limit."""

from datetime import datetime
from typing import Literal
from uuid import UUID

from django.http import Http404, HttpRequest
from django.urls import reverse
from ninja import Field, Query, Router, Schema, Status
from pydantic import create_model

from studio.api import COMMON_ERRORS, ApiError, Errors, Paging, page

from . import engine, job_request, recipes, registry, selectors, services
from .models import Job
from .presenters import job_state

router = Router(tags=["jobs"])


# --- Jobs ---------------------------------------------------------------------------------

# The request's own fields (generation/job_request.py), so the schema cannot drift from it.
JobIn = create_model(
    "JobIn", __base__=Schema, __doc__="What to make. Left out, a field takes its default.",
    **job_request.schema_fields(),
)


class JobImage(Schema):
    id: UUID
    index: int
    seed: int
    width: int
    height: int
    url: str = Field(description="The PNG, with this API's authentication.")
    page_url: str
    init_image_url: str | None = Field(None, description="The input image it was made from "
                                       "(image to image); null for text to image.")
    mask_url: str | None = Field(None, description="The mask it was made with (inpainting).")


class JobOut(Schema):
    id: UUID
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    step: int
    total: int
    attempt: int
    queue_position: int | None
    waiting: str | None = Field(None, description="What a queued job waits for beyond its "
                                "turn: no worker is up, or none that is up has its model.")
    prompt: str
    seed: int | None
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str
    images: list[JobImage]
    timings: dict | None = None


class JobPage(Schema):
    count: int
    items: list[JobOut]


def job_out(job: Job) -> dict:
    """The state the websocket and the generate page show, with image URLs that take a token."""
    state = job_state(selectors.job_view(job))
    for image in state["images"]:
        image["url"] = reverse("api:image_file", args=[image["id"]])
        for key, name in (("init_image_url", "api:image_input"), ("mask_url", "api:image_mask")):
            if image.get(key):
                image[key] = reverse(name, args=[image["id"]])
    return state


def _own_job(request: HttpRequest, job_id: UUID) -> Job:
    job = selectors.get_job_for_user(user=request.auth, job_id=job_id)
    if job is None:
        raise Http404
    return job


@router.post("/jobs", response={201: JobOut, 429: Errors, **COMMON_ERRORS}, summary="Submit")
def job_create(request: HttpRequest, payload: JobIn):
    """Queue a job. It runs on a worker; follow it with GET /jobs/{id} or the websocket
    `/ws/jobs/{id}/`. Refused with 429 and Retry-After when a per-user limit is reached."""
    try:
        job = recipes.submit(user=request.auth,
                             request=job_request.parse(payload.dict(exclude_none=True)))
    except job_request.Refused as exc:
        raise ApiError(exc.status(400), exc.errors, exc.headers) from exc
    return Status(201, job_out(job))


class JobFilters(Paging):
    status: Literal["queued", "running", "succeeded", "failed", "canceled"] | None = None


@router.get("/jobs", response={200: JobPage, **COMMON_ERRORS}, summary="My jobs")
def job_list(request: HttpRequest, filters: Query[JobFilters]):
    jobs = Job.objects.filter(owner=request.auth).prefetch_related("outputs")
    if filters.status:
        jobs = jobs.filter(status=filters.status)
    return page(jobs.order_by("-queued_at"), filters, job_out)


@router.get("/jobs/{job_id}", response={200: JobOut, 404: Errors, **COMMON_ERRORS})
def job_detail(request: HttpRequest, job_id: UUID):
    return job_out(_own_job(request, job_id))


@router.post("/jobs/{job_id}/cancel", response={200: JobOut, 404: Errors, **COMMON_ERRORS})
def job_cancel(request: HttpRequest, job_id: UUID):
    """Cancel my job: a queued one at once, a running one within a step."""
    job = _own_job(request, job_id)
    try:
        services.job_cancel(job=job, actor=request.auth)
    except services.NotJobOwner:
        raise Http404 from None
    return job_out(job)


# --- What can be asked for ----------------------------------------------------------------


class ModelOut(Schema):
    name: str
    default: bool
    family: str | None = Field(description="sd1, sd2 or sdxl; null while its files "
                                           "cannot be read.")
    native_size: int | None = Field(description="The size it was trained at, in pixels: "
                                                "what width and height default to.")


class SamplerOut(Schema):
    name: str
    scheduler: str = Field(description="The diffusers scheduler class it runs.")


@router.get("/models", response={200: list[ModelOut], **COMMON_ERRORS}, tags=["models"])
def model_list(request: HttpRequest):
    default = registry.default_name()
    models = []
    for name in job_request.model_names():
        spec = recipes.model_spec(name)  # configs only, kept per model
        models.append({"name": name, "default": name == default,
                       "family": spec and spec.family, "native_size": spec and spec.native_size})
    return models


class LoraOut(Schema):
    name: str


@router.get("/loras", response={200: list[LoraOut], **COMMON_ERRORS}, tags=["models"])
def lora_list(request: HttpRequest):
    """The LoRAs a request's `loras` may name: the files in the server's LoRA folder."""
    return [{"name": name} for name in job_request.lora_names()]


@router.get("/samplers", response={200: list[SamplerOut], **COMMON_ERRORS}, tags=["models"])
def sampler_list(request: HttpRequest):
    return [
        {"name": name, "scheduler": scheduler}
        for name, (scheduler, _options) in engine.SAMPLERS.items()
    ]

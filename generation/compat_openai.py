"""OpenAI's images API, so the `openai` package and the chat frontends built on it use Studio
unchanged (docs/architecture.md §6): `POST /v1/images/generations`, `POST /v1/images/edits`
and `GET /v1/models`.

A request is one ordinary job, `n` images being a batch of `n`: the generate page's validation
and per-user limits apply, and the images land in the caller's gallery. Errors take OpenAI's
shape, `{"error": {"message", "type", "param", "code"}}`, and its status codes, naming the
OpenAI parameter at fault. `user` (OpenAI's end-user id for its abuse monitoring) and the
parameters of OpenAI's own models (`quality`, `style`, …) are accepted and ignored: the token
already says who asks, and a Studio model has no such knobs. Studio's extensions: the fields
of its request that OpenAI has no name for (`seed`, `negative_prompt`, `steps`, …).

Edits are image to image: a multipart form with the `image` file (PNG, JPEG or WebP; RGBA
accepted, as OpenAI's clients send it) and an optional `mask` file whose transparent pixels
mark the area to edit, drawn anew (`strength` 1, a Studio extension like `seed`, unless the
request says). Without a mask the image's own transparent pixels are the mask; with one, the
image's alpha is ignored; a fully opaque image without a mask is varied as a whole (img2img at
the default `strength`, 0.75). The files are capped
(STUDIO_INPUT_MAX_BYTES each, the body at two of them) before anything reads them, and their
pixels (STUDIO_INPUT_MAX_PIXELS) from their headers before they are decoded. OpenAI's newer
models take several images as references; Studio starts from one, and refuses more by name.
"""

import base64
import re
import time
from typing import Literal

import pydantic
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.urls import reverse
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from pydantic import create_model

from studio.api import (
    JsonParser,
    Text,
    TokenBearer,
    body_too_big,
    read_body,
    signed_url,
    validation_errors,
)

from . import engine, job_request, recipes, waiting
from .job_request import JobRequest, Refused
from .models import Job, Output

api = NinjaAPI(
    title="OpenAI-compatible images API", version="1", urls_namespace="openai",
    openapi_url=None, docs_url=None, auth=TokenBearer(), parser=JsonParser(),
)

# Studio's request's fields as OpenAI's parameters name them.
PARAMS = {"batch_size": "n", "width": "size", "height": "size"}
LABELS = {"batch_size": "n"}
SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}


@api.exception_handler(OpenAIError)
def _openai_error(request: HttpRequest, exc: OpenAIError) -> HttpResponse:
    body = {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
    response = api.create_response(request, {"error": body}, status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return response


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    param, message = next(iter(validation_errors(exc).items()))
    return _openai_error(request, OpenAIError(400, f"Invalid '{param}': {message}",
                                              param=param, code="invalid_value"))


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return _openai_error(request, OpenAIError(413, body_too_big(), param="body",
                                              code="request_too_large"))


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    if request.headers.get("Authorization"):
        error = OpenAIError(401, "Incorrect API key provided. Make one on your Studio profile "
                            "page.", code="invalid_api_key")
    else:
        error = OpenAIError(401, "You didn't provide an API key. Send it in the Authorization "
                            "header using Bearer auth (Authorization: Bearer YOUR_KEY).")
    return _openai_error(request, error)


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return _openai_error(request, OpenAIError(exc.status_code, exc.message))


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return _openai_error(request, OpenAIError(404, "Not found."))


# --- Images -------------------------------------------------------------------------------


class OpenAIFields(Schema):
    """OpenAI's own parameters: `n` and `size` stand for Studio's batch_size, width and height."""

    n: int | None = 1
    size: Text | None = None
    response_format: Literal["url", "b64_json"] | None = "url"
    user: Text | None = None


# The request's fields but those OpenAI names otherwise (PARAMS), by their own names:
# `prompt` and `model` are OpenAI's too, the rest Studio's extensions (the openai package
# sends them with `extra_body={"seed": 42}`).
GenerateIn = create_model(
    "GenerateIn", __base__=OpenAIFields,
    **job_request.schema_fields(leave_out=PARAMS),
)


def studio_request(body: OpenAIFields, **images: bytes | None) -> JobRequest:
    """OpenAI's parameters as Studio's request, with the `init_image` and `mask` an edit
    sends as files; left out, Studio's defaults apply (the default model at its native size,
    an input image's own). Refused names the parameter at fault."""
    params = {**body.model_dump(include=set(job_request.NAMES) - set(PARAMS)), **images}
    params["batch_size"] = body.n
    if body.size and body.size != "auto":
        match = SIZE.fullmatch(body.size)
        if match is None:
            raise Refused({"size": f"Use 'WIDTHxHEIGHT', such as '512x512', or 'auto', not "
                                   f"'{body.size}'."})
        params["width"], params["height"] = match.groups()
    return job_request.parse(params)


def openai_error(refused: Refused, params: dict[str, str] = PARAMS) -> OpenAIError:
    """A refusal in OpenAI's shape: 400 naming the first parameter at fault (`params`:
    Studio's names to OpenAI's), or 429."""
    if refused.kind == Refused.LIMIT:
        return OpenAIError(429, "; ".join(refused.errors.values()), type="requests",
                           code="rate_limit_exceeded", headers=refused.headers)
    labels = {**LABELS, **{key: name for key, name in params.items() if key not in PARAMS}}
    first = next(iter(refused.errors))
    message = "; ".join(f"{labels.get(key, key)}: {text}" for key, text in refused.errors.items())
    return OpenAIError(400, message, param=params.get(first, first), code="invalid_value")


async def finished_outputs(job: Job) -> list[Output]:
    try:
        return await waiting.wait_for_outputs(job)
    except waiting.NoImages as exc:
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        raise OpenAIError(exc.status, exc.message, type=kind) from exc


@sync_to_async
def read_and_submit(request: HttpRequest) -> tuple[OpenAIFields, Job]:
    """The request read, translated, validated and queued, in a thread: all of it is CPU work
    on the caller's data (JSON, the prompt's tokens), which the event loop must not do."""
    body = read_body(request, GenerateIn)
    try:
        return body, recipes.submit(user=request.auth, request=studio_request(body))
    except Refused as exc:
        raise openai_error(exc) from exc


@api.post("/images/generations")
async def generations(request: HttpRequest):
    """Make `n` images and answer when they exist: an async view, so the wait holds no thread
    (generation/waiting.py). The body is GenerateIn, read by read_and_submit."""
    body, job = await read_and_submit(request)
    return await images_answer(request, body, job)


async def images_answer(request: HttpRequest, body: OpenAIFields, job: Job) -> dict:
    """The job's images once they exist, as links or base64 (`response_format`)."""
    outputs = await finished_outputs(job)
    if body.response_format == "b64_json":
        pngs = await waiting.read_pngs(outputs)
        data = [{"b64_json": base64.b64encode(png).decode()} for png in pngs]
    else:
        data = [{"url": image_url(request, output)} for output in outputs]
    first = outputs[0]
    return {"created": int(time.time()), "data": data, "output_format": "png",
            "size": f"{first.width}x{first.height}"}


def image_url(request: HttpRequest, output: Output) -> str:
    """A link that works for an hour without the token, as OpenAI's do; the gallery's image
    shares the output's UUID."""
    path = reverse("api:image_file", args=[output.pk])
    return request.build_absolute_uri(signed_url(path, user=request.auth))


# --- Edits --------------------------------------------------------------------------------

# An edit's files as OpenAI names them: `image[]` is how the openai package sends a list.
EDIT_PARAMS = {**PARAMS, "init_image": "image"}
IMAGE_FILES = ("image", "image[]")
# Room in an edit's body for its form fields and the multipart framing, beside two files.
FORM_BYTES = 2**20

# The request's fields but those OpenAI names otherwise, and the images, which come as files.
EditIn = create_model(
    "EditIn", __base__=OpenAIFields,
    **job_request.schema_fields(leave_out={*PARAMS, "init_image", "mask"}),
)


def upload_refused(param: str, message: str, status: int = 400) -> OpenAIError:
    code = "request_too_large" if status == 413 else "invalid_value"
    return OpenAIError(status, message, param=param, code=code)


def read_form(request: HttpRequest) -> tuple[EditIn, dict]:
    """The edit's fields (EditIn) and its files by parameter, the body's size checked from
    its Content-Length before Django parses it, each file's before it is read."""
    max_bytes = settings.STUDIO_INPUT_MAX_BYTES
    limit = 2 * max_bytes + FORM_BYTES
    if int(request.META.get("CONTENT_LENGTH") or 0) > limit:
        raise upload_refused("image", f"The request is larger than {limit:,} bytes: an image "
                             f"and a mask of at most {max_bytes:,} bytes each.", 413)
    if request.content_type != "multipart/form-data":
        raise upload_refused("image", "Send a multipart/form-data request with the image as "
                             "a file.")
    try:
        form, files = request.POST, request.FILES
    except RequestDataTooBig:
        raise
    except (SuspiciousOperation, MultiPartParserError) as exc:
        raise upload_refused("image", f"The multipart body cannot be read: {exc}") from exc
    uploads = {"image": [f for name in IMAGE_FILES for f in files.getlist(name)],
               "mask": files.getlist("mask")}
    if len(uploads["image"]) != 1:
        raise upload_refused("image", f"Send one image file, not {len(uploads['image'])}.")
    if len(uploads["mask"]) > 1:
        raise upload_refused("mask", "Send at most one mask file.")
    uploads = {param: found[0] for param, found in uploads.items() if found}
    for param, upload in uploads.items():
        if upload.size > max_bytes:
            raise upload_refused(param, f"The {param} file is {upload.size:,} bytes; the "
                                 f"most is {max_bytes:,}.", 413)
    try:
        body = EditIn.model_validate(form.dict())
    except pydantic.ValidationError as exc:  # rendered by _invalid, naming the parameter
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise ValidationError([{**e, "loc": ("form", *e["loc"])} for e in errors]) from None
    return body, {param: upload.read() for param, upload in uploads.items()}


def edit_images(files: dict[str, bytes]) -> dict[str, bytes | None]:
    """The edit's `init_image` and its mask by OpenAI's rule: the mask file's transparent
    pixels, else the image's own; None when the image is fully opaque (edit it all). A mask
    file without transparent pixels marks nothing to edit, and is refused."""
    limits = {"max_bytes": settings.STUDIO_INPUT_MAX_BYTES,
              "max_pixels": settings.STUDIO_INPUT_MAX_PIXELS}
    param = "mask" if "mask" in files else "image"
    try:
        mask = engine.mask_from_alpha(files[param], **limits)
    except engine.InputError as exc:
        raise upload_refused(param, f"The {param} {exc}.") from exc
    if mask is None and param == "mask":
        raise upload_refused("mask", "The mask has no transparent pixels, so nothing would "
                             "be edited: make the area to edit transparent.")
    return {"init_image": files["image"], "mask": mask}


def edit_request(body: EditIn, files: dict[str, bytes]) -> JobRequest:
    """The edit as Studio's request. OpenAI draws the transparent area anew: what lies under
    it (often black) must not show through, so a masked edit starts from noise (`strength`
    1) unless it says otherwise."""
    images = edit_images(files)
    if images["mask"] is not None and body.strength is None:
        body = body.model_copy(update={"strength": 1.0})
    return studio_request(body, **images)


@sync_to_async
def read_and_submit_edit(request: HttpRequest) -> tuple[EditIn, Job]:
    """The edit read, translated, validated and queued, in a thread, as read_and_submit."""
    body, files = read_form(request)
    try:
        recipes.check_limits(request.auth)  # before the files are decoded
        studio = edit_request(body, files)
        return body, recipes.submit(user=request.auth, request=studio)
    except Refused as exc:
        raise openai_error(exc, EDIT_PARAMS) from exc


@api.post("/images/edits")
async def edits(request: HttpRequest):
    """Edit the image where the mask says (or vary it all) and answer when the `n` images
    exist, as generations does. The body is a multipart form, read by read_form."""
    body, job = await read_and_submit_edit(request)
    return await images_answer(request, body, job)


# --- Models -------------------------------------------------------------------------------


def model_out(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "studio"}


@api.get("/models")
def model_list(request: HttpRequest):
    return {"object": "list", "data": [model_out(name) for name in job_request.model_names()]}


@api.get("/models/{model}")
def model_detail(request: HttpRequest, model: str):
    if model not in job_request.model_names():
        raise OpenAIError(404, f"The model '{model}' does not exist.", param="model",
                          code="model_not_found")
    return model_out(model)

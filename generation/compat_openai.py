"""OpenAI's images API, so the `openai` package and the chat frontends built on it use Studio
unchanged (docs/architecture.md §6): `POST /v1/images/generations` and `GET /v1/models`.

A request is one ordinary job, `n` images being a batch of `n`: the generate page's validation
and per-user limits apply, and the images land in the caller's gallery. Errors take OpenAI's
shape, `{"error": {"message", "type", "param", "code"}}`, and its status codes, naming the
OpenAI parameter at fault. `user` (OpenAI's end-user id for its abuse monitoring) and the
parameters of OpenAI's own models (`quality`, `style`, …) are accepted and ignored: the token
already says who asks, and a Studio model has no such knobs. One extension: `seed`.
"""

import base64
import re
import time
from typing import Literal

from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError

from studio.api import (
    JsonParser,
    Text,
    TokenBearer,
    body_too_big,
    read_body,
    signed_url,
    validation_errors,
)

from . import recipes, services, waiting
from .models import Job, Output

api = NinjaAPI(
    title="OpenAI-compatible images API", version="1", urls_namespace="openai",
    openapi_url=None, docs_url=None, auth=TokenBearer(), parser=JsonParser(),
)

# Studio's recipe fields as OpenAI's parameters name them.
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


class GenerateIn(Schema):
    prompt: Text
    model: Text | None = None
    n: int | None = 1
    size: Text | None = None
    response_format: Literal["url", "b64_json"] | None = "url"
    user: Text | None = None
    # Studio's extension (the openai package sends it with `extra_body={"seed": 42}`): the
    # batch's base seed, random if left out. Every image's own seed is in its PNG.
    seed: int | None = None


def job_params(body: GenerateIn) -> dict:
    """OpenAI's parameters as the generate form's; left out, Studio's defaults apply (the
    default model at its native size)."""
    params = {"prompt": body.prompt, "model": body.model, "batch_size": body.n,
              "seed": body.seed}
    if body.size and body.size != "auto":
        match = SIZE.fullmatch(body.size)
        if match is None:
            raise OpenAIError(400, f"Invalid size '{body.size}': use 'WIDTHxHEIGHT', such as "
                              "'512x512', or 'auto'.", param="size", code="invalid_value")
        params["width"], params["height"] = match.groups()
    return params


def submit(user, params: dict) -> Job:
    """Validate and queue like the generate page: OpenAIError names the parameter at fault."""
    try:
        return services.job_submit(user=user, recipe=recipes.recipe_from_params(params))
    except recipes.InvalidParams as exc:
        first = next(iter(exc.errors))
        message = "; ".join(f"{LABELS.get(k, k)}: {v}" for k, v in exc.errors.items())
        raise OpenAIError(400, message, param=PARAMS.get(first, first),
                          code="invalid_value") from exc
    except services.LimitExceeded as exc:
        raise OpenAIError(429, str(exc), type="requests", code="rate_limit_exceeded",
                          headers={"Retry-After": str(exc.retry_after)}) from exc


async def finished_outputs(job: Job) -> list[Output]:
    try:
        return await waiting.wait_for_outputs(job)
    except waiting.NoImages as exc:
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        raise OpenAIError(exc.status, exc.message, type=kind) from exc


@sync_to_async
def read_and_submit(request: HttpRequest) -> tuple[GenerateIn, Job]:
    """The request read, translated, validated and queued, in a thread: all of it is CPU work
    on the caller's data (JSON, the prompt's tokens), which the event loop must not do."""
    body = read_body(request, GenerateIn)
    return body, submit(request.auth, job_params(body))


@api.post("/images/generations")
async def generations(request: HttpRequest):
    """Make `n` images and answer when they exist: an async view, so the wait holds no thread
    (generation/waiting.py). The body is GenerateIn, read by read_and_submit."""
    body, job = await read_and_submit(request)
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


# --- Models -------------------------------------------------------------------------------


def model_out(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "studio"}


@api.get("/models")
def model_list(request: HttpRequest):
    return {"object": "list", "data": [model_out(name) for name in recipes.model_names()]}


@api.get("/models/{model}")
def model_detail(request: HttpRequest, model: str):
    if model not in recipes.model_names():
        raise OpenAIError(404, f"The model '{model}' does not exist.", param="model",
                          code="model_not_found")
    return model_out(model)

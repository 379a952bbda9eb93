"""Studio's JSON API at /api/v1/ (docs/architecture.md §6): the API object, how callers
authenticate, the one error shape, paging, and the teams endpoint. Each app adds its own router
(`generation/api.py`, `gallery/api.py`); the root URLconf mounts them, so studio never imports the
apps.

Every error is `{"errors": {field: message}}`, with `__all__` for what is not about one field.
Why Django Ninja rather than Django REST framework: docs/api.md.
"""

import json
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar
from uuid import UUID

import pydantic
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse
from ninja import Field, NinjaAPI, Router, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.security import APIKeyCookie, APIKeyQuery, HttpBasicAuth, HttpBearer
from ninja.utils import check_csrf

from . import services

# --- Who is calling -----------------------------------------------------------------------


class TokenBearer(HttpBearer):
    """`Authorization: Bearer <api token>`: scripts and the OpenAI and A1111 clients."""

    def authenticate(self, request: HttpRequest, token: str):
        return services.token_authenticate(token)


class TokenBasic(HttpBasicAuth):
    """HTTP Basic with a username and one of that user's API tokens as the password: what
    AUTOMATIC1111 clients send to a server started with `--api-auth`."""

    def authenticate(self, request: HttpRequest, username: str, password: str):
        user = services.token_authenticate(password)
        return user if user is not None and user.get_username() == username else None


class SessionCsrf(APIKeyCookie):
    """The browser's session, so the docs page can try the API out.

    Unlike Ninja's `SessionAuth`, CSRF is checked only once the session has authenticated
    someone: a script that sends no session cookie and a bad token gets 401, not a CSRF 403.
    """

    param_name = settings.SESSION_COOKIE_NAME

    def _get_key(self, request: HttpRequest) -> str | None:
        return request.COOKIES.get(self.param_name)

    def authenticate(self, request: HttpRequest, key: str | None):
        if not key or not request.user.is_authenticated:
            return None
        if check_csrf(request) is not None:
            raise ApiError(403, {"__all__": "CSRF check failed: send the X-CSRFToken header."})
        return request.user


# A signed link names its user and is bound to one path by the salt; access is checked again
# when it is used, so a link to an image hidden since stops working.
SIGNED_URL_MAX_AGE = 3600


def signed_url(path: str, *, user) -> str:
    """`path` with a `signature` that lets whoever holds the link GET it as `user` for an hour:
    what OpenAI's `response_format=url` promises, for clients that do not send the token."""
    signature = signing.TimestampSigner(salt=_salt(path)).sign(str(user.pk))
    return f"{path}?signature={signature}"


class SignedUrl(APIKeyQuery):
    """`?signature=…` made by `signed_url` for exactly this path."""

    param_name = "signature"

    def authenticate(self, request: HttpRequest, key: str | None):
        if not key:
            return None
        try:
            user_id = signing.TimestampSigner(salt=_salt(request.path)).unsign(
                key, max_age=SIGNED_URL_MAX_AGE
            )
        except signing.BadSignature:
            return None
        return get_user_model().objects.filter(pk=user_id, is_active=True).first()


def _salt(path: str) -> str:
    return f"studio.api.signed-url:{path}"


# --- Errors -------------------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than success: its status, a message per field, and extra headers."""

    def __init__(self, status: int, errors: dict[str, str], headers: dict | None = None):
        super().__init__(errors)
        self.status, self.errors, self.headers = status, errors, headers or {}


class Errors(Schema):
    errors: dict[str, str]


def error_response(request: HttpRequest, exc: ApiError) -> HttpResponse:
    response = api.create_response(request, {"errors": exc.errors}, status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return response


def clip(name: str, limit: int = 64) -> str:
    """A name the caller chose (a dict key), short enough to quote back in an error."""
    return name if len(name) <= limit else name[:limit] + "…"


def field_name(loc: Iterable) -> str:
    """The field a validation error is about, as the caller spelled it: Ninja reports
    `("body", "payload", "steps")` or `("query", "limit")`."""
    source, *rest = [clip(str(part)) for part in loc]
    if source == "body":
        rest = rest[1:]  # the view's parameter name, not part of the request
    return ".".join(rest) or source


def validation_errors(exc: ValidationError) -> dict[str, str]:
    errors: dict[str, str] = {}
    for error in exc.errors:
        message = error.get("msg", "Invalid.")
        if error.get("type") == "string_pattern_mismatch":  # the one pattern: Text's
            message = "Remove the NUL character."
        errors.setdefault(field_name(error.get("loc", ["body"])), message)
    return errors


def body_too_big() -> str:
    """What every API answers, with 413, to a body over DATA_UPLOAD_MAX_MEMORY_SIZE. Django
    refuses to read it (RequestDataTooBig, when the body is first read); left to Django, that
    is an HTML 400, or Ninja's 500 traceback with DEBUG on."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return f"The request body is larger than {limit:,} bytes, the most this server reads."


# A JSON number longer than this is beyond any field's range. Read as a float (infinity past
# 308 digits), it reaches the field it was sent for, which refuses it by name; as an int it
# would fail the whole body on Python's limit on the digits of an int (4,300).
MAX_INT_DIGITS = 64


def _int_or_float(digits: str) -> int | float:
    return int(digits) if len(digits) <= MAX_INT_DIGITS else float(digits)


class JsonParser(Parser):
    """Ninja's JSON parser, reading overlong numbers as floats (MAX_INT_DIGITS). All three
    APIs (Studio's, OpenAI's and A1111's) parse with it."""

    def parse_body(self, request: HttpRequest) -> Any:
        return json.loads(request.body, parse_int=_int_or_float)


M = TypeVar("M", bound=pydantic.BaseModel)


def read_body(request: HttpRequest, schema: type[M]) -> M:
    """The JSON body as `schema`, for a view that declares no body parameter: the async
    endpoints, which must parse in a thread what Ninja would parse on the event loop.

    Raises RequestDataTooBig, and ValidationError with the locations Ninja gives a body
    parameter called `body` (so `validation_errors` names the fields the same way).
    """
    raw = request.body  # RequestDataTooBig over DATA_UPLOAD_MAX_MEMORY_SIZE
    try:
        data = JsonParser().parse_body(request) if raw else {}
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        data = None
    if not isinstance(data, dict):
        raise ValidationError(
            [{"loc": ("body",), "msg": "Send a JSON object.", "type": "json_invalid"}]
        )
    try:
        return schema.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = [
            {**error, "loc": ("body", "body", *error["loc"])}
            for error in exc.errors(include_url=False, include_context=False,
                                    include_input=False)
        ]
        raise ValidationError(errors) from None


api = NinjaAPI(
    title="Studio API",
    version="1",
    description="Text-to-image jobs, images, models, samplers and teams. Authenticate with "
    "`Authorization: Bearer <token>` (make one on your profile page).",
    urls_namespace="api",
    openapi_url="/schema",
    docs_url="/docs",
    auth=[TokenBearer(), SessionCsrf()],
    parser=JsonParser(),
)


@api.exception_handler(ApiError)
def _api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    return error_response(request, exc)


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    return error_response(request, ApiError(400, validation_errors(exc)))


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return error_response(request, ApiError(413, {"body": body_too_big()}))


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    message = "Authentication required: send `Authorization: Bearer <api token>`."
    return error_response(
        request, ApiError(401, {"__all__": message}, {"WWW-Authenticate": 'Bearer realm="api"'})
    )


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return error_response(request, ApiError(exc.status_code, {"__all__": exc.message}))


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return error_response(request, ApiError(404, {"__all__": "Not found."}))


# Statuses every authenticated endpoint may answer, for the schema.
COMMON_ERRORS = {400: Errors, 401: Errors, 403: Errors}


# --- Inputs -------------------------------------------------------------------------------

# Postgres text cannot hold NUL: refused at the door as a field error, not a database error.
# Capped at STUDIO_MAX_TEXT_CHARS (as the server started) before anything else reads it.
Text = Annotated[str, Field(pattern=r"^[^\x00]*$", max_length=settings.STUDIO_MAX_TEXT_CHARS)]
MAX_PAGE = 100
MAX_OFFSET = 2**31 - 1  # far beyond any listing, and far below Postgres' OFFSET limit


class Paging(Schema):
    limit: int = Field(20, ge=1, le=MAX_PAGE)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


def page(items, paging: Paging, present: Callable) -> dict:
    """One page of a queryset: `{"count", "items"}`, each item shown by `present`."""
    window = items[paging.offset : paging.offset + paging.limit]
    return {"count": items.count(), "items": [present(item) for item in window]}


# --- Teams --------------------------------------------------------------------------------

teams = Router(tags=["teams"])


class TeamOut(Schema):
    id: UUID
    name: str
    role: str


@teams.get("/teams", response={200: list[TeamOut], **COMMON_ERRORS}, summary="My teams")
def team_list(request: HttpRequest):
    return [
        {"id": team.pk, "name": team.name, "role": team.role_of(request.auth)}
        for team in services.teams_for_user(request.auth)
    ]


api.add_router("", teams)

"""Images in Studio's API (/api/v1/): the gallery's listings, search, one image, its PNG, and
its visibility, through the same doors and rules as the pages."""

from datetime import datetime
from typing import Literal
from uuid import UUID

from django.http import FileResponse, Http404, HttpRequest
from django.urls import reverse
from ninja import Field, Query, Router, Schema

from generation import inputs
from generation.engine import SEED_MAX
from generation.models import InputImage
from studio.api import (
    COMMON_ERRORS,
    ApiError,
    Errors,
    Paging,
    SessionCsrf,
    SignedUrl,
    Text,
    TokenBearer,
)
from studio.services import get_team_for_user

from . import selectors, services
from .models import Image

router = Router(tags=["images"])


class ImageOut(Schema):
    id: UUID
    owner: str
    prompt: str
    model: str
    sampler: str
    seed: int
    width: int
    height: int
    visibility: Literal["private", "team", "public"]
    team: UUID | None
    hidden: bool
    hidden_reason: str = Field(description="Why moderators hid it; for its owner and staff.")
    like_count: int
    created: datetime
    url: str = Field(description="The PNG, with its recipe in its metadata.")
    page_url: str


class ImageDetail(ImageOut):
    recipe: dict = Field(description="The recipe that reproduces this image "
                               "(docs/architecture.md §4).")
    init_image_url: str | None = Field(description="The input image it was made from (image "
                                       "to image); null for text to image.")
    mask_url: str | None = Field(description="The mask it was inpainted with, or null.")


class ImagePage(Schema):
    count: int = Field(description=f"How many images match, counted up to "
                       f"{selectors.COUNT_MAX:,}: that number means at least as many.")
    items: list[ImageOut]
    next: str | None = Field(description="The next page's URL (the same filters and a "
                             "`cursor`), or null on the last page.")


class VisibilityIn(Schema):
    visibility: Literal["private", "team", "public"]
    team: UUID | None = Field(None, description="One of my teams; needed for `team`.")


def image_out(image: Image, *, viewer) -> dict:
    moderated_for_viewer = viewer.pk == image.owner_id or viewer.is_staff
    return {
        "id": image.pk, "owner": image.owner.get_username(), "prompt": image.prompt,
        "model": image.model_name, "sampler": image.sampler, "seed": image.seed,
        "width": image.output.width, "height": image.output.height,
        "visibility": image.visibility, "team": image.team_id, "hidden": image.hidden,
        "hidden_reason": image.hidden_reason if moderated_for_viewer else "",
        "like_count": image.like_count, "created": image.created,
        "url": reverse("api:image_file", args=[image.pk]), "page_url": image.get_absolute_url(),
    }


def _image(request: HttpRequest, image_id: UUID) -> Image:
    image = services.get_image_for_user(user=request.auth, image_id=image_id)
    # A link's holder is not its signer: whoever has it sees what the signer may see, except
    # hidden images, which only their owner and staff see, each through their own login.
    if image is not None and image.hidden and getattr(request, "signed_link", False):
        image = services.get_image_for_user(user=request.user, image_id=image_id)
    if image is None:
        raise Http404
    return image


class ImageLink(SignedUrl):
    """A signed link, tried before the caller's own credentials: it names the one image it
    opens, whoever holds it and whatever session their browser also has."""

    def authenticate(self, request: HttpRequest, key: str | None):
        signer = super().authenticate(request, key)
        request.signed_link = signer is not None
        return signer


class ImageFilters(Paging):
    scope: Literal["public", "mine", "team"] = "public"
    team: UUID | None = Field(None, description="With `scope=team`: one of my teams.")
    q: Text = Field("", description="Words from the prompt (web search syntax).")
    model: Text = ""
    sampler: Text = ""
    # Text, checked by selectors.search_errors, so that only plain decimal digits pass
    # (a number parser would take "+7", " 7" or "7_0").
    seed: str = Field("", description=f"An exact seed: 0 to {SEED_MAX}, decimal digits.")
    sort: Literal["new", "liked"] = "new"
    cursor: str = Field("", max_length=selectors.CURSOR_MAX, description=(
        "Where the page starts: the `cursor` in the `next` link of the page before. Any "
        "depth costs the same; `offset` reads every image it skips."))


@router.get("/images", response={200: ImagePage, **COMMON_ERRORS}, summary="List and search")
def image_list(request: HttpRequest, filters: Query[ImageFilters]):
    """The gallery listings: `public`, `mine`, or one of my teams' (`scope=team&team=<id>`),
    narrowed by words of the prompt and exact filters."""
    team = None
    if filters.scope == "team":
        team = get_team_for_user(user=request.auth, team_id=filters.team) if filters.team else None
        if team is None:
            raise ApiError(400, {"team": "Choose one of your teams."})
    search = {"query": filters.q, "model": filters.model, "sampler": filters.sampler,
              "seed": filters.seed}
    if errors := selectors.search_errors(**search):
        raise ApiError(400, errors)
    images = selectors.gallery_search(
        user=request.auth, scope=filters.scope, team=team, sort=filters.sort, **search
    )
    items, older = _page(images, filters)
    return {"count": selectors.count_capped(images),
            "items": [image_out(image, viewer=request.auth) for image in items],
            "next": _next_link(request, older)}


def _page(images, filters: ImageFilters) -> tuple[list[Image], str | None]:
    """One page from `offset` or after `cursor` (not both), and the next page's cursor."""
    if filters.cursor:
        if filters.offset:
            raise ApiError(400, {"cursor": "Give either a cursor or an offset."})
        if selectors.decode_cursor(filters.cursor, filters.sort) is None:
            raise ApiError(400, {"cursor": "Not a cursor of this listing: use a `next` link."})
    if filters.offset:
        rows = list(images[filters.offset : filters.offset + filters.limit + 1])
        items = rows[:filters.limit]
        more = len(rows) > filters.limit
        return items, selectors.cursor_of(items[-1], filters.sort) if more else None
    window = selectors.listing_window(images, sort=filters.sort, after=filters.cursor,
                                      size=filters.limit)
    return window.items, window.older


def _next_link(request: HttpRequest, cursor: str | None) -> str | None:
    if cursor is None:
        return None
    query = request.GET.copy()
    query.pop("offset", None)
    query["cursor"] = cursor
    return f"{request.path}?{query.urlencode()}"


@router.get("/images/{image_id}", response={200: ImageDetail, 404: Errors, **COMMON_ERRORS})
def image_detail(request: HttpRequest, image_id: UUID):
    image = _image(request, image_id)
    return {**image_out(image, viewer=request.auth), "recipe": image.output.recipe,
            **input_links(image)}


def input_links(image: Image) -> dict[str, str | None]:
    """This API's links to the input image and mask the image was made from, or None."""
    named = inputs.named_by(image.output.recipe)
    return {key: reverse(name, args=[image.pk]) if kind in named else None
            for kind, (key, name) in INPUT_LINKS.items()}


INPUT_LINKS = {InputImage.Kind.IMAGE: ("init_image_url", "api:image_input"),
               InputImage.Kind.MASK: ("mask_url", "api:image_mask")}


@router.patch("/images/{image_id}", response={200: ImageDetail, 404: Errors, **COMMON_ERRORS},
              summary="Change who sees it")
def image_update(request: HttpRequest, image_id: UUID, payload: VisibilityIn):
    image = _image(request, image_id)
    try:
        services.image_set_visibility(
            image=image, actor=request.auth, visibility=payload.visibility, team_id=payload.team
        )
    except services.GalleryError as exc:
        if image.owner_id != request.auth.pk:
            raise ApiError(403, {"__all__": str(exc)}) from exc
        raise ApiError(400, {"team": str(exc)}) from exc  # the one field the owner can get wrong
    return image_detail(request, image_id)


PNG_RESPONSE = {
    200: {"description": "The PNG.", "content": {"image/png": {"schema": {"type": "string",
                                                                           "format": "binary"}}}}
}


@router.get("/images/{image_id}/file", url_name="image_file", summary="The PNG",
            response={404: Errors, **COMMON_ERRORS}, openapi_extra={"responses": PNG_RESPONSE},
            auth=[ImageLink(), TokenBearer(), SessionCsrf()])
def image_file(request: HttpRequest, image_id: UUID):
    """The image's PNG, with its recipe in its metadata. Also reachable without a token
    through a signed link (`?signature=`), as the OpenAI-compatible `url` answers give."""
    image = _image(request, image_id)
    return _png(image, image.output.image)


def _png(image: Image, file) -> FileResponse:
    response = FileResponse(file.open("rb"), content_type="image/png")
    response["Cache-Control"] = ("public, max-age=300" if image.is_public
                                 else "private, max-age=300")
    return response


@router.get("/images/{image_id}/input", url_name="image_input", summary="Its input image",
            response={404: Errors, **COMMON_ERRORS}, openapi_extra={"responses": PNG_RESPONSE})
def image_input(request: HttpRequest, image_id: UUID):
    """The input image this image was made from (image to image), as stored: whoever may
    see the image may see it. 404 for an image made from none."""
    return _input(request, image_id, InputImage.Kind.IMAGE)


@router.get("/images/{image_id}/mask", url_name="image_mask", summary="Its mask",
            response={404: Errors, **COMMON_ERRORS}, openapi_extra={"responses": PNG_RESPONSE})
def image_mask(request: HttpRequest, image_id: UUID):
    """The mask this image was inpainted with, white where it was repainted."""
    return _input(request, image_id, InputImage.Kind.MASK)


def _input(request: HttpRequest, image_id: UUID, kind: str) -> FileResponse:
    image = _image(request, image_id)
    found = inputs.of_output(image.output, kind)
    if found is None:
        raise Http404
    return _png(image, found.file)

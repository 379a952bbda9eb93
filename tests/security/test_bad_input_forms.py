"""Bad input to the pages: gallery query strings and the forms on image, collection, report,
token and staff pages. A page answers with a 4xx, or sends the person back with an error
message; either way the message names the field, and nothing is stored or changed."""

import html
import re

import pytest
from django.urls import reverse

from gallery.models import Collection, Image, Like
from studio.models import ApiToken, Team

from .conftest import counts

pytestmark = pytest.mark.django_db

# A form's message may name a field as its label does, or by the choices it offers.
REASON = ("reason", "what is wrong")  # labelled "What is wrong with it?"
VISIBILITY = ("visibility", "who can see", "private, team or public")
LONG = "a" * 5000  # over STUDIO_MAX_TEXT_CHARS and every name's own limit
DIGITS = "9" * 5000
UNKNOWN_UUID = "00000000-0000-4000-8000-000000000000"
MESSAGE = re.compile(r'<li class="msg error">(.*?)</li>', re.S)


def state() -> tuple:
    """Everything a form on these pages could store or change."""
    images = tuple(Image.objects.order_by("pk").values_list("pk", "visibility", "team_id",
                                                            "hidden"))
    shelves = tuple(Collection.objects.order_by("pk").values_list("pk", "name", "visibility",
                                                                  "team_id"))
    sizes = tuple(Collection.images.through.objects.order_by("pk").values_list("pk"))
    return (counts(), images, shelves, sizes, ApiToken.objects.count(), Team.objects.count(),
            Like.objects.count())


def errors_shown(client, response) -> tuple[int, list[str], str]:
    """(status, the error messages the person is shown, the page): after the redirect, if
    the answer is one."""
    status = response.status_code
    if status == 302 and "/accounts/login/" not in response["Location"]:
        response = client.get(response["Location"])
    page = response.content.decode("utf-8", errors="replace")
    return status, [html.unescape(message) for message in MESSAGE.findall(page)], page


def check_refused(client, response, field: str | tuple | None, before) -> None:
    """A 4xx, or a redirect to a page with an error message; the message (or the 4xx page)
    names `field` (or one of its names: a form may name it as its label does); nothing
    changed."""
    status, messages, page = errors_shown(client, response)
    told = " ".join(messages) or page
    assert 400 <= status < 500 or (status == 302 and messages), (status, told[:500])
    if field is not None:
        names = field if isinstance(field, tuple) else (field,)
        assert any(name.lower() in told.lower() for name in names), told[:500]
    assert state() == before


def case(id_, actor, url, data, field, **settings):
    return pytest.param(actor, url, data, field, settings, id=id_)


def url_of(world, name: str, kind: str) -> str:
    things = world.collections if name.startswith("collection") else world.images
    return reverse(name, args=[things[kind].pk])


FORMS = [
    case("collection-name-empty", "alice", "collection_create", {"name": ""}, "name"),
    case("collection-name-blank", "alice", "collection_create", {"name": "   "}, "name"),
    case("collection-name-too-long", "alice", "collection_create", {"name": LONG}, "name"),
    case("collection-name-nul", "alice", "collection_create", {"name": "shelf\x00"}, "name"),
    case("collection-visibility-unknown", "alice", "collection_create",
         {"name": "shelf", "visibility": "everyone"}, VISIBILITY),
    case("collection-team-not-a-uuid", "alice", "collection_create",
         {"name": "shelf", "visibility": "team", "team": "shapes"}, "team"),
    case("collection-team-unknown", "alice", "collection_create",
         {"name": "shelf", "visibility": "team", "team": UNKNOWN_UUID}, "team"),
    case("collection-team-missing", "alice", "collection_create",
         {"name": "shelf", "visibility": "team"}, "team"),
    case("collections-over-the-cap", "alice", "collection_create", {"name": "shelf"},
         "collection", STUDIO_MAX_COLLECTIONS_PER_USER=3),
    case("collection-set-visibility-unknown", "alice", ("collection_visibility", "private"),
         {"visibility": "everyone"}, VISIBILITY),
    case("collection-set-team-not-a-uuid", "alice", ("collection_visibility", "private"),
         {"visibility": "team", "team": "shapes"}, "team"),
    case("collection-set-team-unknown", "alice", ("collection_visibility", "private"),
         {"visibility": "team", "team": UNKNOWN_UUID}, "team"),
    case("collection-remove-not-a-uuid", "alice", ("collection_remove", "public"),
         {"image": "shapes"}, "image"),
    case("collection-remove-empty", "alice", ("collection_remove", "public"),
         {"image": ""}, "image"),
    case("collect-into-not-a-uuid", "carol", ("image_collect", "public"),
         {"collection": "shapes"}, None),
    case("image-visibility-unknown", "alice", ("image_visibility", "private"),
         {"visibility": "everyone"}, VISIBILITY),
    case("image-visibility-empty", "alice", ("image_visibility", "private"),
         {"visibility": ""}, VISIBILITY),
    case("image-team-not-a-uuid", "alice", ("image_visibility", "private"),
         {"visibility": "team", "team": "shapes"}, "team"),
    case("image-team-unknown", "alice", ("image_visibility", "private"),
         {"visibility": "team", "team": UNKNOWN_UUID}, "team"),
    case("report-reason-empty", "carol", ("image_report", "public"), {"reason": ""}, REASON),
    case("report-reason-too-long", "carol", ("image_report", "public"), {"reason": LONG},
         REASON),
    case("report-reason-nul", "carol", ("image_report", "public"), {"reason": "rude\x00"},
         REASON),
    case("reports-over-the-cap", "carol", ("image_report", "public"), {"reason": "rude"},
         "report", STUDIO_MAX_REPORTS_PER_DAY=0),
    case("token-name-too-long", "alice", "token_create", {"name": LONG}, "name"),
    case("token-name-empty", "alice", "token_create", {"name": ""}, "name"),
    case("token-name-nul", "alice", "token_create", {"name": "laptop\x00"}, "name"),
    case("moderation-action-unknown", "admin", "review_queue",
         {"action": "erase", "image": "shapes"}, "action"),
]


@pytest.mark.parametrize(("actor", "url", "data", "field", "overrides"), FORMS)
def test_a_form_refuses_a_bad_field_by_name(world, settings, actor, url, data, field,
                                            overrides):
    for name, value in overrides.items():
        setattr(settings, name, value)
    path = url_of(world, *url) if isinstance(url, tuple) else reverse(url)
    client = world.client(actor)
    before = state()
    check_refused(client, client.post(path, data), field, before)


@pytest.mark.parametrize("url", [
    "collection_create", ("image_report", "public"), ("image_visibility", "private")])
def test_a_form_refuses_a_body_over_the_size_limit(world, settings, url):
    path = url_of(world, *url) if isinstance(url, tuple) else reverse(url)
    body = "name=shelf&reason=rude&visibility=public&pad=" + "a" * (
        settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1024)
    client = world.client("carol" if "report" in path else "alice")
    before = state()
    response = client.post(path, body, content_type="application/x-www-form-urlencoded")
    check_refused(client, response, None, before)


GALLERIES = {
    "public": lambda w: "/gallery/",
    "mine": lambda w: "/gallery/mine/",
    "team": lambda w: f"/gallery/teams/{w.team.pk}/",
}


@pytest.mark.parametrize("gallery", GALLERIES)
@pytest.mark.parametrize("seed", [
    pytest.param("²", id="superscript"), pytest.param(DIGITS, id="5000-digits"),
    pytest.param(str(2**70), id="beyond-bigint"), pytest.param("٣", id="arabic-indic"),
])
def test_a_gallery_refuses_a_seed_that_is_not_one_by_name(world, gallery, seed):
    client = world.client("alice")
    response = client.get(GALLERIES[gallery](world), {"seed": seed})
    check_refused(client, response, "seed", state())


@pytest.mark.parametrize("params", [
    {"page": "abc"}, {"page": DIGITS}, {"page": "-1"}, {"page": "1e400"}, {"page": "²"},
    {"sort": "random"}, {"q": "red\x00"}, {"q": LONG}, {"q": "!!! & | <-> :*"},
    {"model": LONG}, {"sampler": "\x00"}, {"seed": "-1"}, {"seed": " 7 "},
], ids=lambda params: "-".join(f"{k}={v[:12]!r}" for k, v in params.items()))
def test_an_odd_query_string_never_reaches_a_500(world, params):
    for actor in ("alice", "anonymous"):
        response = world.client(actor).get("/gallery/", params)
        assert response.status_code < 500, (actor, response.status_code)

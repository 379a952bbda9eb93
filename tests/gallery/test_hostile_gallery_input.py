"""Hostile input to the gallery's pages and forms: each gets a 4xx or an ordinary page whose
message names the field, never a 500, and nothing is stored for it."""

import io
import json

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from PIL import Image as PILImage

from gallery import collections, imports, moderation
from gallery.models import Collection, PngImport, Report, Visibility

from .conftest import recipe_for
from .test_imports import A1111, png, upload

pytestmark = pytest.mark.django_db

API_IMAGES = "/api/v1/images"


def said(response) -> str:
    """The messages a form's answer leaves for the next page, as one text."""
    return " ".join(str(message) for message in get_messages(response.wsgi_request))


@pytest.fixture
def listed(make_image, alice):
    return make_image(alice, Visibility.PUBLIC)  # seed 7


# --- Listings and search ------------------------------------------------------------------

BAD_SEEDS = ["²", "9" * 5000, "9" * 30, "4294967296", "-1", "１", "1.5", "0x10", "7\x00", "+7"]


@pytest.mark.parametrize("seed", BAD_SEEDS)
@pytest.mark.parametrize("listing", ["gallery_public", "gallery_mine"])
def test_a_seed_that_is_not_a_32_bit_number_is_a_400_naming_seed_on_the_pages(
    listed, as_viewer, listing, seed
):
    response = as_viewer("alice").get(reverse(listing), {"seed": seed})
    assert response.status_code == 400 and "seed" in response.context["search_errors"]
    assert list(response.context["page"]) == []


def test_a_good_seed_still_finds_its_image(listed, as_viewer):
    response = as_viewer("anonymous").get(reverse("gallery_public"), {"seed": " 7 "})
    assert [image.pk for image in response.context["page"]] == [listed.pk]


@pytest.mark.parametrize("seed", BAD_SEEDS)
def test_a_seed_that_is_not_a_32_bit_number_is_a_400_naming_seed_in_the_api(
    listed, alice, seed
):
    client = Client()
    client.force_login(alice)
    response = client.get(API_IMAGES, {"seed": seed})
    assert response.status_code == 400 and list(response.json()["errors"]) == ["seed"]


@pytest.mark.parametrize("params", [
    {"page": "abc"}, {"page": "9" * 30}, {"page": "1e400"}, {"page": "-1"}, {"page": "\x00"},
    {"sort": "x"}, {"sort": "-like_count; DROP TABLE"}, {"q": "\x00"}, {"q": "a\x00b"},
    {"q": "(" * 2000}, {"q": "a|b!(" * 400}, {"q": '"' * 2000}, {"sampler": "\x00" * 10},
])
@pytest.mark.parametrize("viewer", ["anonymous", "alice"])
def test_odd_query_strings_get_an_ordinary_listing(listed, as_viewer, viewer, params):
    response = as_viewer(viewer).get(reverse("gallery_public"), params)
    assert response.status_code == 200


@pytest.mark.parametrize("params,field", [
    ({"q": "a" * 100_000}, "q"), ({"q": "a " * 50_000}, "q"), ({"q": "-" * 2000}, "q"),
    ({"q": "-" * 40 + "red"}, "q"), ({"q": "(-" * 40 + "red"}, "q"),
    ({"q": "- " * 40 + "red"}, "q"), ({"q": "a <-> " * 333}, "q"),
    ({"model": "m" * 100_000}, "model"),
])
@pytest.mark.parametrize("viewer", ["anonymous", "alice"])
def test_a_search_postgres_cannot_take_is_a_400_naming_its_field(listed, as_viewer, viewer,
                                                                params, field):
    response = as_viewer(viewer).get(reverse("gallery_public"), params)
    assert response.status_code == 400 and list(response.context["search_errors"]) == [field]


@pytest.mark.parametrize("field", ["q", "model", "sampler"])
def test_search_text_over_the_cap_is_refused_by_field_in_the_api(listed, alice, field, settings):
    client = Client()
    client.force_login(alice)
    response = client.get(API_IMAGES, {field: "a" * (settings.STUDIO_MAX_TEXT_CHARS + 1)})
    assert response.status_code == 400 and list(response.json()["errors"]) == [field]


def test_search_text_over_the_cap_matches_nothing_on_the_pages(listed, as_viewer, settings):
    over = "red circle " * (settings.STUDIO_MAX_TEXT_CHARS // 11 + 1)
    response = as_viewer("alice").get(reverse("gallery_public"), {"q": over})
    assert response.status_code == 400 and list(response.context["page"]) == []
    assert list(as_viewer("alice").get(reverse("gallery_public"), {"q": "red"}).context["page"])


# --- Collections --------------------------------------------------------------------------


@pytest.mark.parametrize("image", ["not-a-uuid", "", "\x00", "1" * 5000])
def test_a_tampered_image_field_removes_nothing_from_a_collection(make_image, alice, as_viewer,
                                                                  image):
    kept = make_image(alice)
    shelf = collections.collection_create(owner=alice, name="Shelf")
    collections.collection_add_image(collection=shelf, actor=alice, image=kept)
    response = as_viewer("alice").post(reverse("collection_remove", args=[shelf.pk]),
                                       {"image": image})
    assert response.status_code == 302 and "image" in said(response)
    assert list(shelf.images.all()) == [kept]


def test_a_missing_image_field_removes_nothing_from_a_collection(alice, as_viewer):
    shelf = collections.collection_create(owner=alice, name="Shelf")
    response = as_viewer("alice").post(reverse("collection_remove", args=[shelf.pk]))
    assert response.status_code == 302 and "image" in said(response)


@pytest.mark.parametrize("image", ["not-a-uuid", "\x00", "1" * 5000])
def test_a_tampered_image_field_still_creates_just_the_collection(alice, as_viewer, image):
    response = as_viewer("alice").post(reverse("collection_create"),
                                       {"name": "Shelf", "image": image})
    assert response.status_code == 302
    shelf = Collection.objects.get(owner=alice)
    assert response["Location"] == shelf.get_absolute_url() and not shelf.images.exists()


@pytest.mark.parametrize("fields,word", [
    ({"name": "n" * 101}, "name"),
    ({"name": "a\x00b"}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "Shelf", "visibility": "team", "team": "not-a-uuid"}, "team"),
    ({"name": "Shelf", "visibility": "x" * 5000}, "visibility"),
])
def test_a_bad_collection_form_stores_nothing_and_says_why(alice, as_viewer, fields, word):
    response = as_viewer("alice").post(reverse("collection_create"), fields)
    assert response.status_code == 302 and word in said(response)
    assert not Collection.objects.exists()


@pytest.mark.parametrize("team", ["not-a-uuid", "\x00", ""])
def test_a_tampered_team_field_leaves_a_collection_as_it_was(alice, as_viewer, team):
    shelf = collections.collection_create(owner=alice, name="Shelf")
    response = as_viewer("alice").post(reverse("collection_visibility", args=[shelf.pk]),
                                       {"visibility": "team", "team": team})
    assert response.status_code == 302 and "team" in said(response)
    shelf.refresh_from_db()
    assert shelf.visibility == Visibility.PRIVATE


# --- Imports ------------------------------------------------------------------------------


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


def test_the_import_page_lists_imports_without_a_studio_recipe(media, as_viewer):
    client = as_viewer("alice")
    upload(client, png())  # no metadata at all
    upload(client, png(text={"parameters": A1111}))  # A1111 only
    page = client.get(reverse("import_upload"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "(no recipe)" in html and "a cozy cabin in the woods" in html


def test_staff_may_look_at_an_import_but_not_delete_it(media, as_viewer):
    upload(as_viewer("alice"), png(text={"parameters": A1111}))
    imported = PngImport.objects.get()
    response = as_viewer("admin").post(reverse("import_delete", args=[imported.pk]))
    assert response.status_code == 302 and response["Location"] == imported.get_absolute_url()
    assert "Only the person who imported it" in said(response)
    assert PngImport.objects.filter(pk=imported.pk).exists()
    assert (media / imported.file.name).is_file()


def with_exif_comment(comment: bytes, image_format: str = "JPEG") -> bytes:
    """A JPEG or WebP whose EXIF UserComment, where A1111 writes its parameters, is `comment`
    (a JPEG's EXIF holds at most 64 KiB; a WebP's much more)."""
    exif = PILImage.Exif()
    exif.get_ifd(imports.EXIF_IFD)[imports.USER_COMMENT] = comment
    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8)).save(buffer, image_format, exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("data,message", [
    (png(text={"parameters": "a\x00b\nSteps: 4, Seed: 1, Size: 8x8"}), "NUL"),
    (png(text={"studio_recipe": json.dumps(recipe_for("a\x00b"))}), "NUL"),
    (with_exif_comment(b"ASCII\0\0\0a\x00b"), "NUL"),
    (png(text={"parameters": "x\nSteps: 4, CFG scale: nan, Seed: 1, Size: 8x8"}), "finite"),
    (png(text={"parameters": "x " * 40_000}), "parameters"),
    (with_exif_comment(b"ASCII\0\0\0" + b"x" * 70_000, "WEBP"), "parameters"),
])
def test_metadata_postgres_cannot_keep_or_too_long_to_parse_is_refused(
    media, as_viewer, data, message
):
    client = as_viewer("alice")
    response = upload(client, data)
    assert response.status_code == 400 and message in response.content.decode()
    assert not PngImport.objects.exists() and not (media / "imports").exists()


def test_a_malformed_multipart_body_is_a_400(media, as_viewer):
    response = as_viewer("alice").generic(
        "POST", reverse("import_upload"), b"--x\r\nContent-Disposition: form-data; name=\"image\"",
        content_type="multipart/form-data; boundary=x",
    )
    assert response.status_code == 400
    assert not PngImport.objects.exists()


# --- Reports and the review queue ---------------------------------------------------------


@pytest.mark.parametrize("reason,word", [("r" * 1001, "reason"), ("spam\x00", "reason")])
def test_a_report_reason_too_long_or_with_nul_is_refused(listed, as_viewer, reason, word):
    response = as_viewer("carol").post(reverse("image_report", args=[listed.pk]),
                                       {"reason": reason})
    assert response.status_code == 302 and word in said(response)
    assert not Report.objects.exists()


@pytest.mark.parametrize("fields", [
    {"action": "x" * 100_000}, {"action": "hide", "reason": "r\x00"},
    {"action": "hide", "reason": "r" * 100_000}, {"action": "hide", "image": ["x", "\x00"]},
])
def test_a_tampered_review_form_changes_nothing(listed, as_viewer, alice, fields):
    moderation.report_create(image=listed, reporter=alice, reason="spam")
    response = as_viewer("admin").post(reverse("review_queue"),
                                       {"image": [str(listed.pk)], **fields})
    assert response.status_code == 302
    listed.refresh_from_db()
    assert not listed.hidden


@pytest.mark.parametrize("page", ["abc", "9" * 30, "-1", "\x00"])
def test_the_review_queue_answers_any_page(as_viewer, page):
    assert as_viewer("admin").get(reverse("review_queue"), {"page": page}).status_code == 200

"""A prompt holding HTML and script is text on every page, the admin included.
The browser-level check that no script runs is tests/e2e/test_gallery_escaping.py."""

import pytest
from django.urls import reverse

from gallery import collections
from gallery.models import Report, Visibility

pytestmark = pytest.mark.django_db

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>"\'><b>bold</b>'


@pytest.fixture
def evil_image(make_image, alice, carol):
    image = make_image(alice, Visibility.PUBLIC, prompt=EVIL)
    Report.objects.create(image=image, reporter=carol, reason=EVIL)
    shelf = collections.collection_create(owner=alice, name=EVIL, visibility="public")
    collections.collection_add_image(collection=shelf, actor=alice, image=image)
    return image


def pages(image) -> list[tuple[str, str]]:
    shelf = image.collections.get()
    return [
        ("carol", image.get_absolute_url()),
        ("alice", image.get_absolute_url()),
        ("anonymous", reverse("gallery_public")),
        ("carol", reverse("gallery_public") + "?q=" + EVIL),
        ("alice", reverse("gallery_mine")),
        ("carol", shelf.get_absolute_url()),
        ("alice", reverse("collection_list")),
        ("admin", reverse("review_queue")),
        ("admin", reverse("admin:gallery_image_changelist")),
        ("admin", reverse("admin:gallery_image_change", args=[image.pk])),
        ("admin", reverse("admin:gallery_collection_changelist")),
    ]


def test_every_page_shows_the_prompt_as_text(evil_image, as_viewer):
    for viewer, url in pages(evil_image):
        html = as_viewer(viewer).get(url).content.decode()
        assert "<script>alert" not in html, url
        assert "<img src=x" not in html and "<b>bold</b>" not in html, url
        assert "&lt;script&gt;alert(" in html, url

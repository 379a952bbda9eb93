"""Likes: a toggle per user, and like_count always equal to the likes."""

import pytest
from django.urls import reverse

from gallery.models import Image, Like, Visibility

pytestmark = pytest.mark.django_db


def test_it_toggles_and_keeps_the_count_right(make_image, alice, as_viewer):
    image = make_image(alice, Visibility.PUBLIC)
    url = reverse("image_like", args=[image.pk])
    json = {"HTTP_ACCEPT": "application/json"}
    assert as_viewer("bob").post(url, **json).json() == {"liked": True, "like_count": 1}
    assert as_viewer("carol").post(url, **json).json() == {"liked": True, "like_count": 2}
    assert as_viewer("bob").post(url, **json).json() == {"liked": False, "like_count": 1}
    image.refresh_from_db()
    assert image.like_count == Like.objects.filter(image=image).count() == 1


def test_a_stale_count_is_corrected_by_the_next_like(make_image, alice, as_viewer):
    image = make_image(alice, Visibility.PUBLIC)
    Image.objects.filter(pk=image.pk).update(like_count=40)
    as_viewer("carol").post(reverse("image_like", args=[image.pk]))
    image.refresh_from_db()
    assert image.like_count == 1


def test_most_liked_sorts_by_likes(make_image, alice, as_viewer):
    plain = make_image(alice, Visibility.PUBLIC)
    loved = make_image(alice, Visibility.PUBLIC)
    as_viewer("carol").post(reverse("image_like", args=[loved.pk]))
    page = as_viewer("carol").get(reverse("gallery_public"), {"sort": "liked"}).context["page"]
    assert [i.pk for i in page] == [loved.pk, plain.pk]


def test_the_page_shows_whether_i_like_it(make_image, alice, as_viewer):
    image = make_image(alice, Visibility.PUBLIC)
    client = as_viewer("bob")
    client.post(reverse("image_like", args=[image.pk]))
    page = client.get(reverse("image_detail", args=[image.pk])).content.decode()
    assert 'aria-pressed="true"' in page

"""Listings page by cursor, not by number: "Newer" and "Older" links on the pages, a `next`
link in the API, each page one index range whatever its depth, with no COUNT on the pages
(docs/gallery.md, "Listings")."""

import base64
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from gallery import collections, selectors
from gallery.collections import collection_create
from gallery.models import CollectionItem, Image, Visibility
from studio.services import token_create

pytestmark = pytest.mark.django_db

API = "/api/v1/images"


@pytest.fixture
def small_pages(monkeypatch):
    monkeypatch.setattr(selectors, "PAGE_SIZE", 2)


@pytest.fixture
def five(make_image, alice):
    """Five public images of alice's, a minute apart, newest first; two share a minute."""
    now = timezone.now()
    images = [make_image(alice, Visibility.PUBLIC, prompt=f"circle {i}") for i in range(5)]
    for image, age in zip(images, [0, 1, 2, 2, 3], strict=True):
        Image.objects.filter(pk=image.pk).update(created=now - timedelta(minutes=age))
    return list(Image.objects.filter(pk__in=[i.pk for i in images]).order_by("-created", "-pk"))


def walk(client, url, params=None, link="Older") -> list[list]:
    """The pk lists of each page, following the page's `link` until there is none."""
    pages = []
    response = client.get(url, params or {})
    while True:
        pages.append([image.pk for image in response.context["page"]])
        window = response.context["page"]
        cursor = window.older if link == "Older" else window.newer
        if cursor is None:
            return pages
        assert f">{link}</a>" in response.content.decode()
        response = client.get(url, {**(params or {}),
                                    "after" if link == "Older" else "before": cursor})


def test_it_pages_the_public_gallery_newest_first(five, small_pages, client):
    pages = walk(client, reverse("gallery_public"))
    assert pages == [[i.pk for i in five[:2]], [i.pk for i in five[2:4]], [five[4].pk]]


def test_newer_goes_back_the_way_older_came(five, small_pages, client):
    last = client.get(reverse("gallery_public"), {"after": selectors.cursor_of(five[3])})
    assert [i.pk for i in last.context["page"]] == [five[4].pk]
    back = walk(client, reverse("gallery_public"), {"after": selectors.cursor_of(five[3])},
                link="Newer")
    assert back[1:] == [[i.pk for i in five[2:4]], [i.pk for i in five[:2]]]
    assert ">Newer</a>" not in client.get(reverse("gallery_public")).content.decode()


def test_most_liked_pages_break_ties_by_age(five, small_pages, client):
    Image.objects.filter(pk=five[4].pk).update(like_count=3)
    pages = walk(client, reverse("gallery_public"), {"sort": "liked"})
    assert sum(pages, []) == [five[4].pk] + [i.pk for i in five[:4]]


def test_a_cursor_that_is_not_one_shows_the_first_page(five, small_pages, client):
    for cursor in ("", "garbage", "W10", selectors.cursor_of(five[0]) + "x", "é" * 300,
                   "WyIyMDI2LTAxLTAxIiwgIngiXQ"):  # a naive date and a pk that is none
        page = client.get(reverse("gallery_public"), {"after": cursor}).context["page"]
        assert [i.pk for i in page] == [i.pk for i in five[:2]]


def hostile_cursor(like_count: str, created: str, pk: str) -> str:
    text = f'[{like_count}, "{created}", "{pk}"]'
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("like_count", ["Infinity", "-Infinity", "NaN", "true", "1.5", '"3"',
                                        "1e400", str(2**40)])
def test_a_most_liked_cursor_that_is_no_count_is_no_cursor(five, small_pages, client, alice,
                                                            like_count):
    cursor = hostile_cursor(like_count, "2026-01-01T00:00:00+00:00", str(five[0].pk))
    page = client.get(reverse("gallery_public"), {"sort": "liked", "after": cursor})
    assert page.status_code == 200
    assert [i.pk for i in page.context["page"]] == [i.pk for i in five[:2]]
    answer = api(alice).get(API, {"sort": "liked", "cursor": cursor})
    assert answer.status_code == 400 and "cursor" in answer.json()["errors"]


def test_a_cursor_keeps_the_search_and_sort(five, small_pages, client):
    response = client.get(reverse("gallery_public"), {"q": "circle", "sort": "new"})
    older = response.context["page"].older
    assert f'href="?q=circle&amp;sort=new&amp;after={older}"' in response.content.decode()


def test_a_listing_page_counts_nothing(five, small_pages, alice, client):
    client.force_login(alice)
    for url in (reverse("gallery_public"), reverse("gallery_mine")):
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url, {"after": selectors.cursor_of(five[1])}).status_code == 200
        sql = " ".join(query["sql"] for query in queries).upper()
        assert "COUNT(" not in sql and "OFFSET" not in sql and "DISTINCT" not in sql


def test_the_collection_page_pages_what_the_viewer_may_see(five, small_pages, make_image,
                                                           alice, carol):
    collection = collection_create(owner=alice, name="circles", visibility="public")
    private = make_image(alice, prompt="hers alone")
    CollectionItem.collect(collection, [*five, private])
    as_carol = Client()
    as_carol.force_login(carol)
    url = collection.get_absolute_url()
    seen = []
    response = as_carol.get(url)
    while True:
        seen += [image.pk for image in response.context["images"]]
        if response.context["images"].older is None:
            break
        response = as_carol.get(url, {"after": response.context["images"].older})
    assert seen == [i.pk for i in five]
    # Added through the page as through collect: each image keeps its own date.
    collections.collection_add_image(collection=collection, actor=alice, image=private)
    item = CollectionItem.objects.get(collection=collection, image=private)
    assert item.created == private.created


def test_the_collection_order_is_no_sort_a_listing_takes(five, small_pages, client):
    page = client.get(reverse("gallery_public"), {"sort": "collection"})
    assert page.status_code == 200
    assert [i.pk for i in page.context["page"]] == [i.pk for i in five[:2]]


def api(user) -> Client:
    return Client(headers={"Authorization": f"Bearer {token_create(user=user, name='t')[1]}"})


def test_the_api_next_link_walks_every_image_once(five, alice):
    client, seen, url = api(alice), [], f"{API}?limit=2&q=circle"
    while url:
        answer = client.get(url).json()
        assert answer["count"] == 5
        seen += [item["id"] for item in answer["items"]]
        url = answer["next"]
    assert seen == [str(i.pk) for i in five]


def test_the_api_offset_still_works_and_links_the_next_page(five, alice):
    answer = api(alice).get(API, {"limit": 2, "offset": 1}).json()
    assert [item["id"] for item in answer["items"]] == [str(i.pk) for i in five[1:3]]
    after = api(alice).get(answer["next"]).json()
    assert "offset" not in answer["next"]
    assert [item["id"] for item in after["items"]] == [str(i.pk) for i in five[3:5]]
    assert after["next"] is None


@pytest.mark.parametrize(("params", "message"), [
    ({"cursor": "garbage"}, "Not a cursor"), ({"cursor": "W10", "offset": 2}, "either"),
])
def test_the_api_refuses_a_bad_cursor_by_name(five, alice, params, message):
    response = api(alice).get(API, params)
    assert response.status_code == 400
    assert message in response.json()["errors"]["cursor"]


def test_a_cursor_of_one_sort_is_refused_by_the_other(five, alice):
    cursor = selectors.cursor_of(five[0], "new")
    response = api(alice).get(API, {"sort": "liked", "cursor": cursor})
    assert response.status_code == 400 and "cursor" in response.json()["errors"]

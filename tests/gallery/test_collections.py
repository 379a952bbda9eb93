"""Collections: who sees a collection, and which of its images."""

import threading

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.urls import reverse

from gallery import collections
from gallery.limits import LimitReached
from gallery.models import Collection, Visibility

pytestmark = pytest.mark.django_db

# collection kind -> who may open it (alice owns every collection; bob is her teammate)
MATRIX = {
    "private": {"alice", "admin"},
    "team": {"alice", "bob", "admin"},
    "public": {"alice", "bob", "carol", "anonymous", "admin"},
}


@pytest.fixture
def shelves(alice, team):
    return {
        "private": collections.collection_create(owner=alice, name="Mine"),
        "team": collections.collection_create(owner=alice, name="Ours", visibility="team",
                                              team_id=team.pk),
        "public": collections.collection_create(owner=alice, name="Everyone's",
                                                visibility="public"),
    }


@pytest.mark.parametrize("kind", MATRIX)
@pytest.mark.parametrize("viewer", ["alice", "bob", "carol", "anonymous", "admin"])
def test_the_collection_page_answers_by_visibility(shelves, as_viewer, kind, viewer):
    response = as_viewer(viewer).get(reverse("collection_detail", args=[shelves[kind].pk]))
    assert response.status_code == (200 if viewer in MATRIX[kind] else 404)


def test_a_public_collection_shows_each_viewer_only_images_they_may_see(
    shelves, make_image, alice, team, as_viewer
):
    public = make_image(alice, Visibility.PUBLIC)
    shared = make_image(alice, Visibility.TEAM, team=team)
    private = make_image(alice)
    for image in (public, shared, private):
        collections.collection_add_image(collection=shelves["public"], actor=alice, image=image)
    url = reverse("collection_detail", args=[shelves["public"].pk])

    def seen(viewer):
        return {i.pk for i in as_viewer(viewer).get(url).context["images"]}

    assert seen("alice") == {public.pk, shared.pk, private.pk}
    assert seen("bob") == {public.pk, shared.pk}
    assert seen("carol") == seen("anonymous") == {public.pk}


def test_it_creates_a_collection_and_adds_the_image(make_image, alice, as_viewer):
    image = make_image(alice)
    client = as_viewer("alice")
    response = client.post(reverse("collection_create"), {"name": "Circles", "image": image.pk})
    assert response.status_code == 302
    collection = Collection.objects.get(owner=alice, name="Circles")
    assert list(collection.images.all()) == [image]
    client.post(reverse("collection_remove", args=[collection.pk]), {"image": image.pk})
    assert collection.images.count() == 0


def test_bob_adds_a_team_image_to_his_own_collection(make_image, alice, bob, team, as_viewer):
    image = make_image(alice, Visibility.TEAM, team=team)
    mine = collections.collection_create(owner=bob, name="Bob's")
    as_viewer("bob").post(reverse("image_collect", args=[image.pk]), {"collection": mine.pk})
    assert list(mine.images.all()) == [image]


def test_it_validates_ownership(shelves, make_image, bob, as_viewer):
    image = make_image(bob, Visibility.PUBLIC)
    client = as_viewer("bob")
    client.post(reverse("image_collect", args=[image.pk]), {"collection": shelves["team"].pk})
    assert shelves["team"].images.count() == 0
    client.post(reverse("collection_visibility", args=[shelves["team"].pk]),
                {"visibility": "public"})
    client.post(reverse("collection_delete", args=[shelves["team"].pk]))
    shelves["team"].refresh_from_db()
    assert shelves["team"].visibility == "team"


def test_carol_cannot_add_to_a_collection_she_cannot_see(shelves, make_image, carol, as_viewer):
    image = make_image(carol, Visibility.PUBLIC)
    response = as_viewer("carol").post(
        reverse("image_collect", args=[image.pk]), {"collection": shelves["private"].pk}
    )
    assert response.status_code == 404
    assert shelves["private"].images.count() == 0


def test_a_tampered_collection_id_is_not_found(make_image, alice, as_viewer):
    image = make_image(alice)
    response = as_viewer("alice").post(
        reverse("image_collect", args=[image.pk]), {"collection": "not-a-uuid"}
    )
    assert response.status_code == 404


def test_sharing_a_collection_with_a_team_needs_one_of_your_teams(alice, carol):
    from studio.services import team_create

    foreign = team_create(owner=carol, name="Carol's")
    with pytest.raises(collections.GalleryError):
        collections.collection_create(owner=alice, name="x", visibility="team",
                                      team_id=foreign.pk)


def said(response) -> str:
    return " ".join(str(message) for message in get_messages(response.wsgi_request))


def test_each_person_keeps_at_most_the_collection_cap(alice, carol, as_viewer, settings):
    settings.STUDIO_MAX_COLLECTIONS_PER_USER = 2
    client = as_viewer("alice")
    for name in ("One", "Two"):
        client.post(reverse("collection_create"), {"name": name})
    refused = client.post(reverse("collection_create"), {"name": "Three"})
    assert refused.status_code == 302 and "2 collections" in said(refused)
    assert Collection.objects.filter(owner=alice).count() == 2
    assert collections.collection_create(owner=carol, name="Hers").pk  # a cap per person


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_cannot_pass_the_collection_cap(alice, settings):
    settings.STUDIO_MAX_COLLECTIONS_PER_USER = 3
    results = run_together(8, lambda index: collections.collection_create(
        owner=alice, name=f"Shelf {index}"))
    assert Collection.objects.filter(owner=alice).count() == 3
    assert sum(isinstance(result, LimitReached) for result in results) == 5


def run_together(count: int, work) -> list:
    """`work(index)` in `count` threads released at once; each result or exception."""
    barrier, results = threading.Barrier(count), [None] * count

    def run(index):
        connection.ensure_connection()  # connecting takes long enough to serialize the threads
        barrier.wait()
        try:
            results[index] = work(index)
        except Exception as exc:  # noqa: BLE001 (the test counts them)
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results

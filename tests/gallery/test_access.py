"""The authorization matrix: who sees which image, through every door."""

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse
from django.utils import timezone

from gallery.models import Visibility
from generation import services
from generation.models import Job

from .conftest import png_bytes, recipe_for

pytestmark = pytest.mark.django_db

VIEWERS = ["alice", "bob", "carol", "anonymous", "admin"]
# image kind -> the viewers who may see it (alice owns every image; bob is her teammate)
MATRIX = {
    "private": {"alice", "admin"},
    "team": {"alice", "bob", "admin"},
    "public": {"alice", "bob", "carol", "anonymous", "admin"},
    "hidden": {"alice", "admin"},
}


@pytest.fixture
def images(make_image, alice, team):
    return {
        "private": make_image(alice),
        "team": make_image(alice, Visibility.TEAM, team=team),
        "public": make_image(alice, Visibility.PUBLIC),
        "hidden": make_image(alice, Visibility.PUBLIC, hidden=True),
    }


@pytest.mark.parametrize("kind", MATRIX)
@pytest.mark.parametrize("viewer", VIEWERS)
@pytest.mark.parametrize("door", ["image_detail", "image_file"])
def test_each_door_answers_by_visibility(images, as_viewer, kind, viewer, door):
    response = as_viewer(viewer).get(reverse(door, args=[images[kind].pk]))
    expected = 200 if viewer in MATRIX[kind] else 404
    assert response.status_code == expected


def test_a_private_file_is_not_publicly_cacheable(images, as_viewer):
    response = as_viewer("alice").get(reverse("image_file", args=[images["private"].pk]))
    assert response["Cache-Control"].startswith("private")


def test_the_owner_sees_that_and_why_an_image_is_hidden(images, as_viewer):
    image = images["hidden"]
    image.hidden_reason = "not suitable"
    image.save()
    page = as_viewer("alice").get(reverse("image_detail", args=[image.pk])).content.decode()
    assert "Hidden by a moderator: not suitable" in page


def test_the_owner_shares_with_a_team(images, as_viewer, team):
    image = images["private"]
    as_viewer("alice").post(
        reverse("image_visibility", args=[image.pk]), {"visibility": "team", "team": team.pk}
    )
    assert as_viewer("bob").get(reverse("image_detail", args=[image.pk])).status_code == 200


def test_only_the_owner_changes_visibility(images, as_viewer):
    image = images["team"]
    as_viewer("bob").post(reverse("image_visibility", args=[image.pk]), {"visibility": "public"})
    image.refresh_from_db()
    assert image.visibility == "team"


def test_sharing_with_someone_elses_team_is_refused(images, as_viewer, carol):
    from studio.services import team_create

    foreign = team_create(owner=carol, name="Carol's")
    image = images["private"]
    as_viewer("alice").post(
        reverse("image_visibility", args=[image.pk]), {"visibility": "team", "team": foreign.pk}
    )
    image.refresh_from_db()
    assert image.visibility == "private"


def listed(client, url_name, **params) -> set:
    response = client.get(reverse(url_name), params)
    return {str(image.pk) for image in response.context["page"]}


@pytest.mark.parametrize("viewer", VIEWERS)
def test_the_public_listing_and_search_show_only_public_unhidden_images(images, as_viewer, viewer):
    client = as_viewer(viewer)
    assert listed(client, "gallery_public") == {str(images["public"].pk)}
    assert listed(client, "gallery_public", q="red circle") == {str(images["public"].pk)}


@pytest.mark.parametrize("viewer", ["alice", "bob", "carol"])
def test_my_images_lists_only_the_viewers_own(images, as_viewer, viewer):
    mine = listed(as_viewer(viewer), "gallery_mine")
    assert mine == ({str(image.pk) for image in images.values()} if viewer == "alice" else set())


@pytest.mark.parametrize("viewer", VIEWERS)
def test_a_team_gallery_is_for_its_members(images, as_viewer, team, viewer):
    response = as_viewer(viewer).get(reverse("gallery_team", args=[team.pk]))
    if viewer in ("alice", "bob"):
        assert {str(i.pk) for i in response.context["page"]} == {str(images["team"].pk)}
    elif viewer == "anonymous":
        assert response.status_code == 302
    else:
        assert response.status_code == 404


def test_search_matches_words_of_the_prompt(make_image, alice, as_viewer):
    zebra = make_image(alice, Visibility.PUBLIC, prompt="a purple square on a white background")
    make_image(alice, Visibility.PUBLIC, prompt="a red circle on a black background")
    assert listed(as_viewer("carol"), "gallery_public", q="squares purple") == {str(zebra.pk)}
    assert listed(as_viewer("carol"), "gallery_public", seed="7", sampler="DDIM") != set()
    assert listed(as_viewer("carol"), "gallery_public", seed="8") == set()


@pytest.mark.parametrize("kind", MATRIX)
@pytest.mark.parametrize("viewer", ["alice", "bob", "carol", "admin"])
@pytest.mark.parametrize("door", ["image_like", "image_report", "image_collect"])
def test_each_action_answers_by_visibility(images, as_viewer, django_user_model, kind, viewer,
                                           door):
    from gallery.collections import collection_create

    own = collection_create(owner=django_user_model.objects.get(username=viewer), name="Own")
    response = as_viewer(viewer).post(
        reverse(door, args=[images[kind].pk]), {"reason": "x", "collection": own.pk}
    )
    # An action on an image you may not see is a 404, as its page is; else back to the page.
    assert response.status_code == (302 if viewer in MATRIX[kind] else 404)


@pytest.mark.parametrize("door", ["image_like", "image_report", "image_collect", "image_delete",
                                  "image_reproduce", "image_visibility"])
def test_anonymous_actions_go_to_the_login_page(images, as_viewer, door):
    response = as_viewer("anonymous").post(reverse(door, args=[images["public"].pk]))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


@pytest.mark.parametrize("door", ["image_like", "image_report", "image_delete"])
def test_actions_only_allow_post(images, as_viewer, door):
    assert as_viewer("alice").get(reverse(door, args=[images["public"].pk])).status_code == 405


def test_a_hidden_image_leaves_every_public_door(images, as_viewer, alice):
    from gallery import collections

    image = images["hidden"]
    shared = collections.collection_create(owner=alice, name="All", visibility="public")
    for each in images.values():
        collections.collection_add_image(collection=shared, actor=alice, image=each)
    carol = as_viewer("carol")
    assert carol.get(reverse("image_detail", args=[image.pk])).status_code == 404
    assert carol.get(reverse("image_file", args=[image.pk])).status_code == 404
    assert str(image.pk) not in listed(carol, "gallery_public", q="red circle")
    page = carol.get(reverse("collection_detail", args=[shared.pk]))
    assert {str(i.pk) for i in page.context["images"]} == {str(images["public"].pk)}
    assert carol.post(reverse("image_like", args=[image.pk])).status_code == 404


def test_a_nul_character_in_search_is_harmless(images, as_viewer):
    response = as_viewer("carol").get(reverse("gallery_public"), {"q": "red\x00", "model": "\x00"})
    assert response.status_code == 200


def test_a_finished_jobs_image_is_found_by_the_words_of_its_prompt(settings, tmp_path, alice,
                                                                   as_viewer):
    """The worker's path: job_finish stores the outputs and the gallery indexes them."""
    settings.MEDIA_ROOT = tmp_path
    recipe = recipe_for("a purple square on a white background")
    job = Job.objects.create(owner=alice, recipe=recipe, status=Job.Status.RUNNING, attempt=1,
                             started_at=timezone.now())
    outputs = services.job_finish(job=job, timings={}, outputs=[
        {"index": 0, "image": ContentFile(png_bytes(), name="0.png"), "recipe": recipe,
         "width": 8, "height": 8},
    ])
    (image,) = [output.gallery_image for output in outputs]
    client = as_viewer("alice")
    assert listed(client, "gallery_mine", q="squares purple") == {str(image.pk)}
    assert listed(client, "gallery_mine", q="circle") == set()

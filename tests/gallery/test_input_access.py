"""Who sees the input image and mask an image was made from: inputs are private to their
owner, but whoever may see an output may see what it was made from, through the output's
door (/images/<id>/input.png and /mask.png, and the API's), and nobody else by any door."""

import pytest
from django.test import Client
from django.urls import reverse

from gallery.models import Visibility
from generation import engine, inputs
from generation.models import InputImage
from generation.presenters import job_state
from generation.selectors import job_view
from studio import services as studio_services
from studio.services import token_create

from .conftest import png_bytes

pytestmark = pytest.mark.django_db

VIEWERS = ["alice", "bob", "carol", "anonymous", "admin"]
# image kind -> who may see it (alice owns every image; bob is her teammate)
MATRIX = {
    "private": {"alice", "admin"},
    "team": {"alice", "bob", "admin"},
    "public": {"alice", "bob", "carol", "anonymous", "admin"},
    "hidden": {"alice", "admin"},
}
KINDS = {"image_input": InputImage.Kind.IMAGE, "image_mask": InputImage.Kind.MASK}


def store_inputs(owner, color=(90, 90, 90)) -> tuple[dict, list[InputImage]]:
    image, ref = engine.canonical_image(png_bytes(color))
    mask, mask_ref, _ = engine.canonical_mask(png_bytes((255, 255, 255)))
    stored = [inputs.store(owner=owner, png=image, sha256=ref.sha256, width=8, height=8,
                           kind="image"),
              inputs.store(owner=owner, png=mask, sha256=mask_ref.sha256, width=8, height=8,
                           kind="mask")]
    return {"init_image": ref.to_json(), "strength": 0.5, "mask": mask_ref.to_json()}, stored


@pytest.fixture
def made_from_input(make_image):
    """An image made from an input image and mask of its owner's, as a worker stores it."""

    def make(owner, *args, refs_of=None, **kwargs):
        image = make_image(owner, *args, **kwargs)
        refs, stored = store_inputs(refs_of or owner)
        output = image.output
        output.recipe = {**output.recipe, **refs}
        output.save()
        if refs_of is None:
            output.job.inputs.add(*stored)
        return image

    return make


@pytest.fixture
def images(made_from_input, alice, team):
    return {
        "private": made_from_input(alice),
        "team": made_from_input(alice, Visibility.TEAM, team=team),
        "public": made_from_input(alice, Visibility.PUBLIC),
        "hidden": made_from_input(alice, Visibility.PUBLIC, hidden=True),
    }


@pytest.mark.parametrize("kind", MATRIX)
@pytest.mark.parametrize("viewer", VIEWERS)
@pytest.mark.parametrize("door", ["image_input", "image_mask"])
def test_the_input_and_mask_go_with_the_image(images, as_viewer, kind, viewer, door):
    response = as_viewer(viewer).get(reverse(door, args=[images[kind].pk]))
    expected = 200 if viewer in MATRIX[kind] else 404
    assert response.status_code == expected
    if expected == 200:
        served = b"".join(response.streaming_content)
        stored = inputs.of_output(images[kind].output, KINDS[door])
        assert served == inputs.read(stored) and served[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("viewer", "kind", "status"), [
    ("alice", "private", 200), ("carol", "private", 404), ("bob", "team", 200),
    ("carol", "public", 200), ("carol", "hidden", 404), ("admin", "hidden", 200),
])
@pytest.mark.parametrize("door", ["api:image_input", "api:image_mask"])
def test_the_api_serves_them_by_the_same_rule(images, alice, bob, carol, admin, viewer,
                                               kind, status, door):
    user = {"alice": alice, "bob": bob, "carol": carol, "admin": admin}[viewer]
    api = Client(headers={"Authorization": f"Bearer {token_create(user=user, name='t')[1]}"})
    assert api.get(reverse(door, args=[images[kind].pk])).status_code == status
    assert Client().get(reverse(door, args=[images[kind].pk])).status_code == 401


def test_an_image_made_from_no_input_has_none_to_show(make_image, alice, as_viewer):
    image = make_image(alice, Visibility.PUBLIC)
    store_inputs(alice)  # alice has inputs, but this image was not made from them
    for door in ("image_input", "image_mask"):
        assert as_viewer("alice").get(reverse(door, args=[image.pk])).status_code == 404
    page = as_viewer("alice").get(image.get_absolute_url())
    assert page.context["init_image_url"] is None and page.context["mask_url"] is None


def test_the_image_page_links_its_input_and_mask(images, as_viewer):
    image = images["public"]
    page = as_viewer("carol").get(image.get_absolute_url())
    assert page.context["init_image_url"] == f"/images/{image.pk}/input.png"
    assert page.context["mask_url"] == f"/images/{image.pk}/mask.png"


def test_the_image_page_says_when_its_input_is_no_longer_stored(images, as_viewer):
    image = images["public"]
    image.output.job.inputs.all().delete()
    page = as_viewer("carol").get(image.get_absolute_url())
    assert page.context["init_image_url"] is None and page.context["mask_url"] is None
    assert "no longer stored on this server" in page.content.decode()


def test_a_hash_alone_opens_nothing(made_from_input, alice, carol, as_viewer):
    """carol's public image names alice's input by hash (anyone can write a hash into a
    recipe), but her job holds no such input: nobody gets alice's pixels through it."""
    store_inputs(alice)
    forged = made_from_input(carol, Visibility.PUBLIC, refs_of=alice)
    for viewer in ("carol", "anonymous", "alice"):
        for door in ("image_input", "image_mask"):
            assert as_viewer(viewer).get(reverse(door, args=[forged.pk])).status_code == 404


def test_the_owners_job_state_names_its_inputs(images, alice):
    image = images["private"]
    job = image.output.job
    [state] = job_state(job_view(job))["images"]
    assert state["init_image_url"] == f"/images/{image.pk}/input.png"
    assert state["mask_url"] == f"/images/{image.pk}/mask.png"
    api = Client(headers={"Authorization": f"Bearer {token_create(user=alice, name='t')[1]}"})
    [shown] = api.get(f"/api/v1/jobs/{job.pk}").json()["images"]
    assert shown["init_image_url"] == reverse("api:image_input", args=[image.pk])
    assert api.get(shown["init_image_url"]).status_code == 200
    detail = api.get(f"/api/v1/images/{image.pk}").json()
    assert (detail["init_image_url"], detail["mask_url"]) == (
        reverse("api:image_input", args=[image.pk]), reverse("api:image_mask", args=[image.pk]))


def test_deleting_an_account_deletes_its_inputs_files(
    images, alice, bob, django_capture_on_commit_callbacks
):
    _, theirs = store_inputs(bob, color=(1, 2, 3))
    mine = list(InputImage.objects.filter(owner=alice))
    assert mine and all(image.file.storage.exists(image.file.name) for image in mine + theirs)
    with django_capture_on_commit_callbacks(execute=True):
        studio_services.account_delete(user=alice)
    assert not InputImage.objects.filter(owner_id=alice.pk).exists()
    assert not any(image.file.storage.exists(image.file.name) for image in mine)
    assert all(image.file.storage.exists(image.file.name) for image in theirs)

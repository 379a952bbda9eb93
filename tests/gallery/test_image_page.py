"""The image page: the whole recipe, copy-seed, the trajectory scrubber, Remix, download and
Delete."""

from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from django.urls import reverse

from gallery.models import Image, Visibility
from generation import recipes
from generation.models import Output

from .conftest import TRAJECTORY

pytestmark = pytest.mark.django_db


def test_it_shows_the_whole_recipe_and_the_scrubber(make_image, alice, as_viewer):
    image = make_image(alice, prompt="a blue square")
    Output.objects.filter(pk=image.pk).update(trajectory=TRAJECTORY)  # the image's own frames
    page = as_viewer("alice").get(reverse("image_detail", args=[image.pk])).content.decode()
    for text in ("a blue square", "DDIM", "studio-demo", 'id="seed">7<', "Copy seed",
                 'type="range" id="scrubber" min="0" max="3"', "frame4"):
        assert text in page


def test_remix_prefills_the_generate_page_with_the_recipe(make_image, alice, as_viewer):
    image = make_image(alice, prompt="a blue square")
    response = as_viewer("alice").get(reverse("image_detail", args=[image.pk]))
    remix = urlparse(response.context["remix_url"])
    assert remix.path == reverse("generate")
    initial = recipes.form_initial({k: v[0] for k, v in parse_qs(remix.query).items()})
    assert initial["prompt"] == "a blue square"
    assert (initial["sampler"], initial["steps"], initial["seed"]) == ("DDIM", "4", "7")
    assert (initial["width"], initial["height"], initial["guidance_scale"]) == ("8", "8", "3.0")


def test_download_is_an_attachment_with_the_metadata_intact(make_image, alice, as_viewer):
    image = make_image(alice)
    response = as_viewer("alice").get(reverse("image_file", args=[image.pk]), {"download": 1})
    assert response["Content-Disposition"] == 'attachment; filename="studio-7.png"'
    assert b"".join(response.streaming_content) == image.output.image.open("rb").read()


def test_the_owner_deletes_the_image_and_its_file(make_image, alice, as_viewer,
                                                  django_capture_on_commit_callbacks):
    image = make_image(alice, Visibility.PUBLIC)
    path = Path(image.output.image.path)
    with django_capture_on_commit_callbacks(execute=True):
        response = as_viewer("alice").post(reverse("image_delete", args=[image.pk]))
    assert response.status_code == 302
    assert not Image.objects.filter(pk=image.pk).exists()
    assert not Output.objects.filter(pk=image.pk).exists()
    assert not path.exists()


@pytest.mark.parametrize("viewer", ["bob", "carol"])
def test_only_the_owner_deletes(make_image, alice, team, as_viewer, viewer):
    image = make_image(alice, Visibility.PUBLIC)
    as_viewer(viewer).post(reverse("image_delete", args=[image.pk]))
    assert Image.objects.filter(pk=image.pk).exists()
    assert Path(image.output.image.path).exists()

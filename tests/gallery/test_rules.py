"""The gallery's rules as the models hold them: who sees an image or a collection, and an
image's own seed read from a stored recipe."""

from itertools import product
from urllib.parse import parse_qs, urlparse

import pytest
from django.contrib.auth.models import AnonymousUser
from django.urls import reverse

from gallery.models import Collection, Image, Visibility
from gallery.services import remix_query
from generation.models import StoredRecipe

from .test_imports import png, upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


def test_public_is_shared_with_everyone_and_not_hidden(make_image, alice):
    images = {
        (visibility, hidden): make_image(alice, visibility=visibility, hidden=hidden)
        for visibility, hidden in product(Visibility.values, (False, True))
    }
    public = set(Image.objects.public())
    assert public == {images[Visibility.PUBLIC, False]}
    for image in images.values():
        assert image.is_public == (image in public)


def test_who_sees_which_image(make_image, alice, bob, carol, admin, team):
    made = {
        "public": make_image(alice, visibility=Visibility.PUBLIC),
        "public hidden": make_image(alice, visibility=Visibility.PUBLIC, hidden=True),
        "team": make_image(alice, visibility=Visibility.TEAM, team=team),
        "team hidden": make_image(alice, visibility=Visibility.TEAM, team=team, hidden=True),
        "private": make_image(alice),
    }

    def seen_by(user) -> set[str]:
        visible = set(Image.objects.visible_to(user))
        return {name for name, image in made.items() if image in visible}

    assert seen_by(AnonymousUser()) == seen_by(carol) == {"public"}
    assert seen_by(bob) == {"public", "team"}  # a member of the team, not the owner
    assert seen_by(alice) == seen_by(admin) == set(made)
    assert Image.objects.visible_to(bob).filter(pk=made["team"].pk).count() == 1  # no repeats


def test_collections_follow_the_images_rule_without_hiding(alice, bob, carol, team):
    made = {visibility: Collection.objects.create(owner=alice, name=visibility,
                                                  visibility=visibility, team=team)
            for visibility in Visibility.values}
    assert set(Collection.objects.public()) == {made[Visibility.PUBLIC]}
    assert set(Collection.objects.visible_to(carol)) == {made[Visibility.PUBLIC]}
    assert set(Collection.objects.visible_to(bob)) == {made[Visibility.PUBLIC],
                                                       made[Visibility.TEAM]}
    assert set(Collection.objects.visible_to(alice)) == set(made.values())


def test_an_images_own_seeds_come_from_its_batch_index():
    stored = StoredRecipe({"seed": 10, "batch_index": 2, "subseed": 5, "subseed_strength": 0.3})
    assert (stored.image_seed, stored.image_subseed, stored.subseed_strength) == (12, 7, 0.3)
    bare = StoredRecipe({"prompt": "no seed recorded"})
    assert (bare.image_seed, bare.image_subseed, bare.subseed_strength) == (None, 0, 0.0)


def test_an_outputs_image_seed(make_image, alice):
    output = make_image(alice).output
    output.recipe = {**output.recipe, "seed": 100, "batch_index": 3}
    assert output.image_seed == 103


def test_remix_carries_the_images_own_variation_seed():
    query = parse_qs(remix_query({"prompt": "x", "seed": 10, "batch_index": 1, "subseed": 40,
                                  "subseed_strength": 0.5}))
    assert (query["seed"], query["subseed"], query["subseed_strength"]) == (
        ["11"], ["41"], ["0.5"])
    assert "subseed" not in parse_qs(remix_query({"prompt": "x", "seed": 1, "subseed": 9}))


def test_an_import_without_a_seed_shows_none_and_remixes_with_a_random_one(media, as_viewer):
    client = as_viewer("alice")
    no_seed = "a fox\nSteps: 8, Sampler: Euler a, CFG scale: 7"
    page = client.get(upload(client, png(text={"parameters": no_seed}))["Location"])
    html = page.content.decode()
    assert page.status_code == 200 and 'id="seed"' not in html and "None" not in html
    remix = parse_qs(urlparse(page.context["remix_url"]).query)
    assert remix["prompt"] == ["a fox"] and "seed" not in remix
    assert urlparse(page.context["remix_url"]).path == reverse("generate")

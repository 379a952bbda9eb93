"""Signed links to an image's PNG (OpenAI `response_format=url` answers): a link opens exactly
one path for whoever holds it, as long as its signer may see the image and it is not hidden."""

import pytest
from django.core import signing
from django.test import Client
from django.urls import reverse

from gallery import moderation
from gallery.models import Visibility
from studio.api import signed_url
from studio.services import token_create

pytestmark = pytest.mark.django_db


def file_path(image) -> str:
    return reverse("api:image_file", args=[image.pk])


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_an_anonymous_holder_loses_the_image_once_staff_hide_it(make_image, alice, admin):
    image = make_image(alice, Visibility.PUBLIC)
    link = signed_url(file_path(image), user=alice)
    assert Client().get(link).status_code == 200
    moderation.images_hide(images=[image], actor=admin, reason="spam")
    assert Client().get(link).status_code == 404


@pytest.mark.parametrize("signer", ["alice", "admin"])
def test_a_link_to_a_hidden_image_opens_nothing_whoever_signed_it(
    make_image, alice, admin, signer
):
    image = make_image(alice, hidden=True)
    link = signed_url(file_path(image), user={"alice": alice, "admin": admin}[signer])
    assert Client().get(link).status_code == 404


@pytest.mark.parametrize(("holder", "status"), [("alice", 200), ("admin", 200), ("bob", 404),
                                                ("carol", 404)])
def test_a_link_to_a_hidden_image_opens_it_for_its_owner_and_staff_only(
    make_image, alice, bob, carol, admin, team, holder, status
):
    image = make_image(alice, Visibility.TEAM, team=team, hidden=True)
    link = signed_url(file_path(image), user=alice)
    user = {"alice": alice, "bob": bob, "carol": carol, "admin": admin}[holder]
    assert logged_in(user).get(link).status_code == status


def test_owner_and_staff_still_see_a_hidden_image_through_their_own_login(
    make_image, alice, admin
):
    image = make_image(alice, Visibility.PUBLIC, hidden=True)
    for user in (alice, admin):
        token = token_create(user=user, name="test")[1]
        by_token = Client().get(file_path(image), HTTP_AUTHORIZATION=f"Bearer {token}")
        assert by_token.status_code == 200
        assert logged_in(user).get(file_path(image)).status_code == 200


def test_a_holder_logged_in_as_someone_else_still_gets_the_linked_image(
    make_image, alice, bob, carol
):
    image = make_image(alice)  # private: neither bob nor carol may see it themselves
    link = signed_url(file_path(image), user=alice)
    for holder in (bob, carol):
        response = logged_in(holder).get(link)
        assert response.status_code == 200 and response.getvalue()[:4] == b"\x89PNG"
        assert logged_in(holder).get(file_path(image)).status_code == 404


def test_a_holder_with_a_token_still_gets_the_linked_image(make_image, alice, carol):
    image = make_image(alice)
    token = token_create(user=carol, name="test")[1]
    link = signed_url(file_path(image), user=alice)
    assert Client().get(link, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200


def test_an_expired_link_is_refused(make_image, alice, carol, monkeypatch):
    image = make_image(alice)
    two_hours_ago = signing.b62_encode(int(signing.time.time()) - 7200)
    with monkeypatch.context() as patch:
        patch.setattr(signing.TimestampSigner, "timestamp", lambda self: two_hours_ago)
        link = signed_url(file_path(image), user=alice)
    assert Client().get(link).status_code == 401
    assert logged_in(carol).get(link).status_code == 404  # carol's own session: not hers


@pytest.mark.parametrize("tamper", [
    lambda link: link[:-1] + ("A" if link[-1] != "A" else "B"),
    lambda link: link.replace("signature=", "signature=x"),
    lambda link: link + "x" * 5000,
    lambda link: link.split("?")[0] + "?signature=",
    lambda link: link.split("?")[0] + "?signature=%00",
])
def test_a_tampered_signature_opens_nothing(make_image, alice, carol, tamper):
    image = make_image(alice)
    link = tamper(signed_url(file_path(image), user=alice))
    assert Client().get(link).status_code == 401
    assert logged_in(carol).get(link).status_code == 404


def test_a_signature_opens_only_the_path_it_was_made_for(make_image, alice, carol):
    image, other = make_image(alice), make_image(alice)
    link = signed_url(file_path(image), user=alice)
    moved = link.replace(str(image.pk), str(other.pk))
    assert Client().get(moved).status_code == 401
    assert logged_in(carol).get(moved).status_code == 404
    # Nor another door to the same image: the API's detail, the page's PNG.
    signature = link.split("?", 1)[1]
    detail = reverse("api:image_detail", args=[image.pk])
    assert Client().get(f"{detail}?{signature}").status_code == 401
    assert Client().get(f"{image.get_file_url()}?{signature}").status_code == 404


def test_a_link_signed_by_someone_who_may_not_see_the_image_opens_nothing(
    make_image, alice, carol, bob, team
):
    private, shared = make_image(alice), make_image(alice, Visibility.TEAM, team=team)
    assert Client().get(signed_url(file_path(private), user=carol)).status_code == 404
    assert logged_in(bob).get(signed_url(file_path(private), user=carol)).status_code == 404
    # bob may see the team image, so his link opens it for carol.
    assert logged_in(carol).get(signed_url(file_path(shared), user=bob)).status_code == 200

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.urls import reverse

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_it_signs_up_and_logs_in(client):
    response = client.post(
        reverse("signup"),
        {"username": "dora", "email": "", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 302
    assert get_user_model().objects.filter(username="dora").exists()
    assert client.get(reverse("profile")).status_code == 200


def test_signup_shows_errors_next_to_the_field(client, alice):
    response = client.post(
        reverse("signup"),
        {"username": "alice", "password1": PASSWORD, "password2": "different"},
    )
    assert response.status_code == 200
    assert b'id="id_username-error"' in response.content
    assert b'id="id_password2-error"' in response.content


def test_it_logs_in_and_out(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get(reverse("profile")).status_code == 200
    assert client.post(reverse("logout")).status_code == 302
    assert client.get(reverse("profile")).status_code == 302


def test_it_rejects_a_wrong_password(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert client.get(reverse("profile")).status_code == 302


def test_profile_requires_login(client):
    response = client.get(reverse("profile"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_it_changes_the_password(client, alice):
    client.force_login(alice)
    response = client.post(
        reverse("password_change"),
        {
            "old_password": PASSWORD,
            "new_password1": "a-new-long-pass-9",
            "new_password2": "a-new-long-pass-9",
        },
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("a-new-long-pass-9")


def test_it_sends_a_password_reset_email(client, alice):
    response = client.post(reverse("password_reset"), {"email": "alice@example.com"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    assert "alice" in mail.outbox[0].body


def test_deleting_ones_account_asks_for_the_password(client, alice):
    client.force_login(alice)
    for wrong in ({"confirm": "alice"}, {"password": "wrong"}, {"password": ""}):
        response = client.post(reverse("account_delete"), wrong)
        assert response.status_code == 200
        assert b'id="id_password-error"' in response.content
    assert get_user_model().objects.filter(username="alice").exists()
    response = client.post(reverse("account_delete"), {"password": PASSWORD})
    assert response.status_code == 302
    assert not get_user_model().objects.filter(username="alice").exists()


def test_account_deletion_hands_a_team_to_a_member(client, alice, bob, team):
    client.force_login(alice)
    client.post(reverse("account_delete"), {"password": PASSWORD})
    assert team.role_of(bob) == "owner"


def test_home_page_says_what_studio_is(client):
    response = client.get(reverse("home"))
    assert response.status_code == 200
    assert b"latent diffusion" in response.content

import pytest
from django.core.management import call_command
from django.urls import reverse

from studio import services
from studio.models import ApiToken, hash_token

pytestmark = pytest.mark.django_db


def test_it_creates_a_token_shown_once_and_stored_hashed(client, alice):
    client.force_login(alice)
    client.post(reverse("token_create"), {"name": "laptop"})
    page = client.get(reverse("profile")).content.decode()
    token = ApiToken.objects.get(user=alice)
    raw = page.split('id="new-token">')[1].split("<")[0]
    assert raw.startswith("st_")
    assert token.digest == hash_token(raw) and raw not in token.digest
    assert services.token_authenticate(raw) == alice
    assert raw not in client.get(reverse("profile")).content.decode()


def test_it_revokes_a_token(client, alice):
    _token, raw = services.token_create(user=alice, name="t")
    client.force_login(alice)
    client.post(reverse("token_revoke", args=[_token.pk]))
    assert services.token_authenticate(raw) is None


def test_one_cannot_revoke_someone_elses_token(client, alice, carol):
    token, raw = services.token_create(user=alice, name="t")
    client.force_login(carol)
    assert client.post(reverse("token_revoke", args=[token.pk])).status_code == 404
    assert services.token_authenticate(raw) == alice


def test_an_inactive_users_token_does_not_authenticate(alice):
    _token, raw = services.token_create(user=alice, name="t")
    alice.is_active = False
    alice.save()
    assert services.token_authenticate(raw) is None


def test_createtoken_prints_only_the_token(alice, capsys):
    call_command("createtoken", "alice")
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert services.token_authenticate(out.strip()) == alice

"""Password guessing stops after a few tries, at every log-in door, with the right password too."""

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.urls import reverse

from studio.login_throttle import ADDRESS_ALLOWANCE, USERNAME_ALLOWANCE, login_throttle_clear
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def address():
    """A client address of this test's own: test runs side by side share one Redis."""
    value = f"198.51.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    names = ["alice", "bob", "carol", "admin", *(f"nobody{i}" for i in range(30))]
    yield value
    for name in names:
        login_throttle_clear(username=name, address=value)


@pytest.fixture(autouse=True)
def small_allowance(settings, address):
    settings.STUDIO_LOGIN_MAX_FAILURES = 3
    settings.STUDIO_LOGIN_LOCKOUT_SECONDS = 600
    for name in ("alice", "bob", "carol", "admin"):
        login_throttle_clear(username=name)


def log_in(client, address, username, password, url="login"):
    return client.post(
        reverse(url), {"username": username, "password": password}, REMOTE_ADDR=address
    )


def test_the_right_password_is_refused_with_429_after_too_many_failures(client, alice, address):
    for _ in range(3):
        assert log_in(client, address, "alice", "wrong").status_code == 200
    response = log_in(client, address, "alice", PASSWORD)
    assert response.status_code == 429
    assert "Too many failed log-ins. Try again in 10 minutes." in response.content.decode()
    assert 590 <= int(response["Retry-After"]) <= 600
    assert client.get(reverse("profile")).status_code == 302


def test_a_few_failures_from_one_address_do_not_lock_the_owner_out_elsewhere(
    client, alice, address
):
    for _ in range(3):
        log_in(client, address, "alice", "wrong")
    assert log_in(Client(), "203.0.113.9", "alice", PASSWORD).status_code == 302
    login_throttle_clear(username="alice", address="203.0.113.9")


def test_guesses_spread_over_many_addresses_lock_the_username(client, alice, address):
    addresses = [f"203.0.113.{i}" for i in range(3 * USERNAME_ALLOWANCE)]
    for other in addresses:  # one guess each: no address nor pair reaches its allowance
        assert log_in(Client(), other, "alice", "wrong").status_code == 200
    assert log_in(client, address, "alice", PASSWORD).status_code == 429
    for other in addresses:
        login_throttle_clear(username="alice", address=other)


def test_a_success_forgives_the_usernames_earlier_typos(client, alice, address):
    for _ in range(2):
        log_in(client, address, "alice", "wrong")
    assert log_in(client, address, "alice", PASSWORD).status_code == 302
    client.logout()
    for _ in range(2):
        assert log_in(client, address, "alice", "wrong").status_code == 200
    assert log_in(client, address, "alice", PASSWORD).status_code == 302


def test_one_address_guessing_many_usernames_is_stopped_too(client, carol, address):
    allowance = 3 * ADDRESS_ALLOWANCE
    for i in range(allowance):
        assert log_in(client, address, f"nobody{i}", "wrong").status_code == 200
    response = log_in(client, address, "carol", PASSWORD)
    assert response.status_code == 429
    assert "Too many failed log-ins." in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_parallel_guesses_get_no_more_tries_than_the_allowance(alice, address):
    """Each guess on a connection of its own, as web requests are, all sent at once."""
    start = threading.Barrier(16)

    def guess(_) -> int:
        try:
            start.wait()
            return log_in(Client(), address, "alice", "wrong").status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(guess, range(16)))
    assert codes.count(200) == 3 and codes.count(429) == 13


def test_the_admin_log_in_is_throttled_too(client, admin, address):
    for _ in range(3):
        log_in(client, address, "admin", "wrong", url="admin:login")
    response = log_in(client, address, "admin", PASSWORD, url="admin:login")
    assert "Too many failed log-ins." in response.content.decode()
    assert client.get(reverse("admin:index")).status_code == 302


def test_the_lockout_ends_after_its_time(client, alice, address, settings):
    settings.STUDIO_LOGIN_LOCKOUT_SECONDS = 1
    for _ in range(3):
        log_in(client, address, "alice", "wrong")
    assert log_in(client, address, "alice", PASSWORD).status_code == 429
    time.sleep(2.1)
    assert log_in(client, address, "alice", PASSWORD).status_code == 302


def test_the_password_asked_to_delete_an_account_counts_against_the_allowance(
    client, alice, address
):
    client.force_login(alice)
    for _ in range(3):
        response = client.post(reverse("account_delete"), {"password": "wrong"},
                               REMOTE_ADDR=address)
        assert "That is not your password." in response.content.decode()
    response = client.post(reverse("account_delete"), {"password": PASSWORD}, REMOTE_ADDR=address)
    assert "Too many failed log-ins." in response.content.decode()
    assert get_user_model().objects.filter(username="alice").exists()
    client.logout()
    assert log_in(client, address, "alice", PASSWORD).status_code == 429


def test_the_old_password_asked_to_change_it_counts_against_the_allowance(
    client, alice, address
):
    client.force_login(alice)
    change = {"new_password1": "another-long-passphrase", "new_password2":
              "another-long-passphrase"}
    for _ in range(3):
        response = client.post(reverse("password_change"), {"old_password": "wrong", **change},
                               REMOTE_ADDR=address)
        assert "That is not your password." in response.content.decode()
    response = client.post(reverse("password_change"), {"old_password": PASSWORD, **change},
                           REMOTE_ADDR=address)
    assert "Too many failed log-ins." in response.content.decode()
    alice.refresh_from_db()
    assert alice.check_password(PASSWORD)

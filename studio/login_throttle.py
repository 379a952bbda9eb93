"""Log-in throttling: failed log-ins counted in Redis (through Django's cache) per username
from one address, per address and per username from anywhere; past an allowance, every
log-in it covers is refused for a while, even one with the right password, so guessing a
password costs the attacker hours, not seconds.

The log-in forms (studio.forms.ThrottledLogin) call these around `authenticate`. API tokens
need none of this: they are 256 random bits, nothing to guess.
"""

import contextlib
import hashlib
import math
import time

from django.conf import settings
from django.core.cache import cache

# A shared address (an office, a campus behind one NAT) holds many people, each with a few
# typos, so an address is allowed four times a username's failures: one person's lockout does
# not lock out the rest, while one address trying a password on many usernames still stops.
ADDRESS_ALLOWANCE = 4
# A username is locked from every address only far past one address's allowance: else anyone,
# anywhere, could lock anyone out with a handful of wrong passwords. Guesses spread over many
# addresses still stop there.
USERNAME_ALLOWANCE = 10


def _key(kind: str, value: str, what: str) -> str:
    # Hashed: a username is whatever the visitor typed, of any length and any characters.
    digest = hashlib.sha256(value.casefold().encode()).hexdigest()
    return f"login-throttle:{kind}:{digest}:{what}"


def _subjects(*, username: str, address: str) -> list[tuple[str, str, int]]:
    limit = settings.STUDIO_LOGIN_MAX_FAILURES
    subjects = [
        ("pair", f"{username}\n{address}" if username else "", limit),
        ("address", address, limit * ADDRESS_ALLOWANCE),
        ("user", username, limit * USERNAME_ALLOWANCE),
    ]
    return [subject for subject in subjects if subject[1]]


def login_attempt(*, username: str, address: str) -> int:
    """Count a log-in attempt before its password is checked; 0 when it may go ahead, else
    the seconds until the next one may.

    Every attempt counts as a failure until `login_succeeded` says otherwise: counted after
    the check instead, a burst of parallel guesses would all pass before the first failed.
    """
    subjects = _subjects(username=username, address=address)
    wait = _lockout_left(subjects)
    if wait:
        return wait
    lockout = settings.STUDIO_LOGIN_LOCKOUT_SECONDS
    refused = False
    for kind, value, limit in subjects:
        if _count(_key(kind, value, "failures"), lockout) > limit:
            # The failure window opened before the lockout, so it has closed when it ends.
            cache.add(_key(kind, value, "until"), time.time() + lockout, timeout=lockout)
            refused = True
    # Only this attempt's own count decides: one that came in time goes ahead even when a
    # later one, counted meanwhile, has just started the lockout.
    return max(_lockout_left(subjects), 1) if refused else 0


def login_succeeded(*, username: str, address: str) -> None:
    """The right password forgives the username's earlier typos from this address. The
    address and the username elsewhere keep their other failures, less this attempt: an
    attacker who logs in to an account of their own must not reset them."""
    cache.delete(_key("pair", f"{username}\n{address}", "failures"))
    for kind, value in (("address", address), ("user", username)):
        if value:
            with contextlib.suppress(ValueError):  # its window has closed meanwhile
                cache.decr(_key(kind, value, "failures"))


def _lockout_left(subjects: list[tuple[str, str, int]]) -> int:
    keys = [_key(kind, value, "until") for kind, value, _ in subjects]
    until = max(cache.get_many(keys).values(), default=0)
    return max(math.ceil(until - time.time()), 0)


def _count(key: str, window: int) -> int:
    cache.add(key, 0, timeout=window)
    try:
        return cache.incr(key)
    except ValueError:  # the window closed between the two calls
        cache.set(key, 1, timeout=window)
        return 1


def login_throttle_clear(*, username: str = "", address: str = "") -> None:
    """Forget the failures and lockouts of a username and an address (tests, support)."""
    cache.delete_many([
        _key(kind, value, what)
        for kind, value, _ in _subjects(username=username, address=address)
        for what in ("failures", "until")
    ])


def retry_message(seconds: int) -> str:
    minutes = max(math.ceil(seconds / 60), 1)
    unit = "minute" if minutes == 1 else "minutes"
    return f"Too many failed log-ins. Try again in {minutes} {unit}."

import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from studio import services
from tests.conftest import run_async


def hello(server, **headers):
    async def go():
        async with connect(server.ws_url + "/ws/hello/", additional_headers=headers) as ws:
            return json.loads(await ws.recv())

    return run_async(go())


def session_cookie(client, user):
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def test_it_refuses_anonymous_connections(studio_server):
    with pytest.raises(InvalidStatus) as err:
        hello(studio_server, Origin=studio_server.url)
    assert err.value.response.status_code == 403


def test_it_refuses_a_connection_without_origin_or_token(studio_server):
    with pytest.raises(InvalidStatus):
        hello(studio_server)


def test_it_accepts_a_logged_in_browser(studio_server, client, alice):
    message = hello(studio_server, Origin=studio_server.url, Cookie=session_cookie(client, alice))
    assert message == {"type": "hello", "user": "alice", "auth": "session"}


def test_it_refuses_a_session_from_a_foreign_origin(studio_server, client, alice):
    with pytest.raises(InvalidStatus) as err:
        hello(studio_server, Origin="https://evil.example", Cookie=session_cookie(client, alice))
    assert err.value.response.status_code == 403


def test_it_refuses_a_session_cookie_without_origin(studio_server, client, alice):
    with pytest.raises(InvalidStatus):
        hello(studio_server, Cookie=session_cookie(client, alice))


def test_it_accepts_a_valid_api_token(studio_server, alice):
    _token, raw = services.token_create(user=alice, name="script")
    message = hello(studio_server, Authorization=f"Bearer {raw}")
    assert message == {"type": "hello", "user": "alice", "auth": "token"}


def test_it_refuses_a_bad_api_token(studio_server, alice):
    with pytest.raises(InvalidStatus):
        hello(studio_server, Authorization="Bearer st_not-a-real-token")


def refused_status(server, **headers) -> int:
    with pytest.raises(InvalidStatus) as err:
        hello(server, **headers)
    return err.value.response.status_code


def test_a_session_from_another_port_on_our_host_is_refused(studio_server, client, alice):
    cookie = session_cookie(client, alice)
    for port in (studio_server.port + 1, 80, 443):
        origin = f"http://127.0.0.1:{port}"
        assert refused_status(studio_server, Origin=origin, Cookie=cookie) == 403
    assert refused_status(studio_server, Origin="http://127.0.0.1", Cookie=cookie) == 403


def test_a_session_from_our_host_and_port_over_another_scheme_is_refused(
    studio_server, client, alice
):
    origin = f"https://127.0.0.1:{studio_server.port}"
    assert refused_status(studio_server, Origin=origin, Cookie=session_cookie(client, alice)) == 403


def test_a_session_from_another_allowed_host_is_refused(studio_server, client, alice):
    """localhost is in ALLOWED_HOSTS, but the socket was opened on 127.0.0.1: another site."""
    origin = f"http://localhost:{studio_server.port}"
    assert refused_status(studio_server, Origin=origin, Cookie=session_cookie(client, alice)) == 403


@pytest.mark.parametrize("origin", [
    "null", "http://127.0.0.1:{port}/", "http://127.0.0.1:{port}/path", "ws://127.0.0.1:{port}",
    "HTTP://127.0.0.1:{port}", "http://user@127.0.0.1:{port}", "http://[::1", "http://:{port}",
])
def test_an_origin_that_is_not_exactly_ours_is_refused(studio_server, client, alice, origin):
    origin = origin.format(port=studio_server.port)
    assert refused_status(studio_server, Origin=origin, Cookie=session_cookie(client, alice)) == 403


def test_our_own_origin_on_a_host_we_do_not_serve_is_refused(
    studio_server, client, alice, settings
):
    """A rebound DNS name sends its own name as both Host and Origin: the host must be ours."""
    settings.ALLOWED_HOSTS = ["localhost"]
    origin = studio_server.url
    assert refused_status(studio_server, Origin=origin, Cookie=session_cookie(client, alice)) == 403


def test_a_trusted_origin_is_accepted(studio_server, client, alice, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://studio.example"]
    message = hello(
        studio_server, Origin="https://studio.example", Cookie=session_cookie(client, alice)
    )
    assert message == {"type": "hello", "user": "alice", "auth": "session"}


def test_behind_a_tls_proxy_the_https_origin_is_ours(studio_server, client, alice):
    """uvicorn trusts X-Forwarded-Proto from a proxy on this machine: the socket is wss."""
    message = hello(
        studio_server, Origin=f"https://127.0.0.1:{studio_server.port}",
        Cookie=session_cookie(client, alice), **{"X-Forwarded-Proto": "https"},
    )
    assert message == {"type": "hello", "user": "alice", "auth": "session"}

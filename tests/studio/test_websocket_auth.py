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

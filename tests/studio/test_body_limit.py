"""The ASGI cap on request bodies: a body larger than any door takes is refused before Django
spools it to disk, whether it names its length or arrives chunked."""

import http.client
import socket

import pytest

from studio.asgi import BODY_LIMIT


@pytest.fixture
def connection(studio_server):
    conn = http.client.HTTPConnection("127.0.0.1", studio_server.port, timeout=30)
    yield conn
    conn.close()


def test_a_body_announced_over_the_limit_is_refused_before_it_is_sent(connection):
    connection.putrequest("POST", "/import/")
    connection.putheader("Content-Length", str(BODY_LIMIT + 1))
    connection.putheader("Content-Type", "application/octet-stream")
    connection.endheaders()  # not one byte of the body follows: the answer comes first
    response = connection.getresponse()
    assert response.status == 413
    assert b'"body"' in response.read()


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(studio_server):
    """Chunks up to one past the limit, then no more: the answer must come without the rest
    (a client that went on sending would meet a closed connection, which the kernel may
    answer with a reset that loses the response)."""
    chunk = b"x" * 2**20
    with socket.create_connection(("127.0.0.1", studio_server.port), timeout=30) as sock:
        sock.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(BODY_LIMIT // len(chunk) + 1):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 413
        # The cap's own answer, not the door's (which would come only after the whole body).
        assert f"larger than {BODY_LIMIT:,} bytes".encode() in response.read()


def test_a_length_that_is_not_a_number_is_refused(connection):
    connection.putrequest("POST", "/v1/images/generations", skip_accept_encoding=True)
    connection.putheader("Content-Length", "-5")
    connection.endheaders()
    assert connection.getresponse().status in (400, 413)


def test_bodies_within_the_limit_reach_the_door(connection):
    connection.request("POST", "/api/v1/jobs", body=b"{}",
                       headers={"Content-Type": "application/json"})
    assert connection.getresponse().status == 401  # the door's own answer: no token

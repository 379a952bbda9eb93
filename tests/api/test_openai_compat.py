"""The OpenAI-compatible images API, driven by the real `openai` package against a
live server and, for generation, a real Celery worker."""

import base64
import io
import json
import urllib.error
import urllib.request

import openai
import pytest
from PIL import Image as PILImage

from gallery.models import Image
from generation import engine


def client(server, api_key: str) -> openai.OpenAI:
    # No retries: a refusal must reach the test as it was sent.
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0)


def test_it_generates_pngs_of_the_requested_size_and_seed(
    studio_server, module_worker, alice, token, tiny
):
    answer = client(studio_server, token(alice)).images.generate(
        model="tiny", prompt="red circle", n=2, size="32x32", response_format="b64_json",
        extra_body={"seed": 1234},
    )
    assert len(answer.data) == 2 and answer.size == "32x32"
    for index, item in enumerate(answer.data):
        png = base64.b64decode(item.b64_json)
        with PILImage.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and image.size == (32, 32)
        recipe, parameters = engine.read_png(png)
        assert recipe.seed == 1234 and recipe.batch_index == index
        assert f"Seed: {1234 + index}," in parameters
    # Ordinary jobs: the images are in alice's gallery.
    assert Image.objects.filter(owner=alice).count() == 2


def test_url_answers_are_links_that_work_without_the_token(
    studio_server, module_worker, alice, token, tiny
):
    answer = client(studio_server, token(alice)).images.generate(
        prompt="red circle", size="32x32", response_format="url"
    )
    with urllib.request.urlopen(answer.data[0].url, timeout=10) as response:  # noqa: S310
        assert response.headers["Content-Type"] == "image/png"
        with PILImage.open(io.BytesIO(response.read())) as image:
            assert image.size == (32, 32)


def test_a_missing_or_bad_key_is_401(studio_server, alice):
    with pytest.raises(openai.AuthenticationError) as bad:
        client(studio_server, "st_not-a-token").images.generate(prompt="red circle")
    assert bad.value.status_code == 401
    assert bad.value.body["code"] == "invalid_api_key"
    assert set(bad.value.body) == {"message", "type", "param", "code"}
    # The openai package will not send no key at all; other clients may.
    request = urllib.request.Request(f"{studio_server.url}/v1/models")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310
    assert missing.value.code == 401
    assert json.loads(missing.value.read())["error"]["type"] == "invalid_request_error"


def test_errors_name_the_parameter(studio_server, alice, token, tiny):
    api = client(studio_server, token(alice))
    cases = [({"size": "big"}, "size"), ({"size": "33x32"}, "size"), ({"n": 20}, "n"),
             ({"model": "dall-e-9"}, "model"), ({"response_format": "gif"}, "response_format")]
    for fields, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            api.images.generate(prompt="red circle", **fields)
        assert refused.value.status_code == 400
        assert refused.value.body["param"] == param, fields
        assert refused.value.body["type"] == "invalid_request_error"


def test_limits_apply(studio_server, alice, token, tiny, settings):
    settings.STUDIO_MAX_QUEUED_PER_USER = 0
    with pytest.raises(openai.RateLimitError) as refused:
        client(studio_server, token(alice)).images.generate(prompt="red circle")
    assert refused.value.response.headers["Retry-After"] == "5"
    assert refused.value.body["code"] == "rate_limit_exceeded"


def test_it_lists_the_models(studio_server, alice, token, tiny):
    api = client(studio_server, token(alice))
    assert "tiny" in [model.id for model in api.models.list()]
    assert api.models.retrieve("tiny").owned_by == "studio"
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("dall-e-9")


def test_a_url_answer_stops_working_once_staff_hide_the_image(
    studio_server, module_worker, alice, admin, bob, token, tiny
):
    from gallery import moderation

    answer = client(studio_server, token(alice)).images.generate(
        prompt="red circle", size="32x32", response_format="url"
    )
    url = answer.data[0].url
    # Whoever holds the link gets the image, even a client that sends its own token.
    with_bobs_token = urllib.request.Request(url, headers={"Authorization": f"Bearer {token(bob)}"})
    with urllib.request.urlopen(with_bobs_token, timeout=10) as response:  # noqa: S310
        assert response.status == 200
    moderation.images_hide(images=Image.objects.filter(owner=alice), actor=admin, reason="spam")
    for request in (url, with_bobs_token):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)  # noqa: S310
        assert refused.value.code == 404

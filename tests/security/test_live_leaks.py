"""What only a real run shows: the model through a real worker, the pages through a live server.

1. A stranger who reproduces the published image of a batch gets that image and nothing of its
   private sibling: not its file, not its pixels in a preview or a trajectory frame.
2. The link an OpenAI `url` answer gives works in any browser, logged in as anyone, until
   staff hide the image; then it opens nothing.
"""

import asyncio
import base64
import io
import json
import shutil

import numpy as np
import pytest
import requests
from django.conf import settings
from django.test import Client
from django.urls import reverse
from PIL import Image as PILImage
from websockets.asyncio.client import connect

from gallery import moderation
from gallery.models import Image, Reproduction
from generation import recipes, services
from generation.models import Job, Output
from studio.services import token_create
from tests.conftest import Worker, job_finished, run_async

pytestmark = pytest.mark.django_db(transaction=True)

SIZE = 32


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker):
    started = Worker()
    started.start()
    yield started
    started.stop()


@pytest.fixture
def stored_jobs():
    """The worker writes to the real media folder; remove what these jobs stored there."""
    yield
    for job_id in Job.objects.values_list("pk", flat=True):
        shutil.rmtree(settings.MEDIA_ROOT / "outputs" / str(job_id), ignore_errors=True)


def finished(job: Job, timeout: float = 120) -> Job:
    job = job_finished(job, timeout)
    assert job.status == Job.Status.SUCCEEDED, job.error
    return job


def decoded(data: bytes) -> np.ndarray:
    with PILImage.open(io.BytesIO(data)) as picture:
        return np.asarray(picture.convert("RGB"))


def data_url_size(url: str) -> tuple[int, int]:
    with PILImage.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))) as picture:
        return picture.size


def page_frames(page: str) -> list[dict]:
    marker = '<script id="trajectory" type="application/json">'
    if marker not in page:
        return []
    start = page.index(marker) + len(marker)
    return json.loads(page[start : page.index("</script>", start)])


def watched_previews(server, job: Job, token: str) -> list[str]:
    """Every preview the job's websocket sends its watcher until the job ends."""
    async def go():
        previews = []
        headers = {"Authorization": f"Bearer {token}"}
        async with connect(f"{server.ws_url}/ws/jobs/{job.pk}/", additional_headers=headers,
                           open_timeout=10) as socket:
            while True:
                message = json.loads(await asyncio.wait_for(socket.recv(), 120))
                if message.get("preview"):
                    previews.append(message["preview"])
                if message["type"] == "state" and message["job"]["status"] in Job.FINISHED:
                    return previews

    return run_async(go())


def single_image(size: tuple[int, int]) -> bool:
    """A preview or frame of one square image, not a batch side by side."""
    width, height = size
    return width == height


def test_a_stranger_who_reproduces_a_published_image_gets_nothing_of_its_sibling(
    worker, studio_server, alice, carol, tiny, stored_jobs
):
    recipe = recipes.recipe_from_params({"prompt": "red circle", "model": tiny, "steps": 12,
                                         "seed": 42, "width": SIZE, "height": SIZE,
                                         "batch_size": 2})
    batch = finished(services.job_submit(user=alice, recipe=recipe))
    published, sibling = Image.objects.filter(output__job=batch).order_by("output__index")
    Image.objects.filter(pk=published.pk).update(visibility="public")
    with sibling.output.image.open("rb") as file:
        secret = decoded(file.read())

    browser = Client()
    browser.force_login(carol)
    page = browser.get(published.get_absolute_url()).content.decode()
    assert all(single_image(data_url_size(frame["image"])) for frame in page_frames(page))

    browser.post(reverse("image_reproduce", args=[published.pk]))
    rerun = Reproduction.objects.get(job__owner=carol).job
    previews = watched_previews(studio_server, rerun, token_create(user=carol, name="x")[1])
    finished(rerun)
    assert all(single_image(data_url_size(preview)) for preview in previews)

    kept = Output.objects.filter(job__owner=carol)
    assert [output.index for output in kept] == [published.output.index]
    for output in Output.objects.all():
        response = browser.get(reverse("image_file", args=[output.pk]))
        if response.status_code == 200:
            assert not np.array_equal(decoded(b"".join(response.streaming_content)), secret)
    state = browser.get(reverse("job_detail", args=[rerun.pk])).json()["job"]
    assert [image["index"] for image in state["images"]] == [published.output.index]
    reproduction = Reproduction.objects.get(job=rerun)
    verdict = browser.get(reverse("reproduction_state", args=[reproduction.pk])).json()
    assert verdict["verdict"] == "identical"  # bit-identical verification still holds


def test_an_openai_link_opens_the_image_for_anyone_until_staff_hide_it(
    worker, studio_server, alice, carol, admin, tiny, stored_jobs
):
    answer = requests.post(
        studio_server.url + "/v1/images/generations", timeout=120,
        headers={"Authorization": f"Bearer {token_create(user=alice, name='x')[1]}"},
        json={"prompt": "red circle", "model": tiny, "size": f"{SIZE}x{SIZE}", "n": 1,
              "response_format": "url"},
    )
    assert answer.status_code == 200, answer.text
    link = answer.json()["data"][0]["url"]
    browser = Client()
    browser.force_login(carol)
    as_carol = {settings.SESSION_COOKIE_NAME: browser.cookies[settings.SESSION_COOKIE_NAME].value}

    assert requests.get(link, timeout=10).status_code == 200
    assert requests.get(link, cookies=as_carol, timeout=10).status_code == 200

    image = Image.objects.get(owner=alice)
    moderation.images_hide(images=[image], actor=admin, reason="not suitable")
    assert requests.get(link, timeout=10).status_code == 404
    assert requests.get(link, cookies=as_carol, timeout=10).status_code == 404

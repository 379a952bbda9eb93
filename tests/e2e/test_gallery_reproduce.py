"""Reproduce and verify, end to end: a real job through the real worker, then its
reproduction from the image page in Chromium, which shows "identical"."""

import shutil

import pytest
from django.conf import settings

from gallery.models import Image, Reproduction
from generation import recipes, services
from tests.conftest import job_finished
from tests.e2e.conftest import signed_in

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]




@pytest.fixture
def outputs_cleaned():
    """The worker writes to the real media folder; remove what these jobs stored there."""
    jobs = []
    yield jobs
    for job_id in jobs:
        shutil.rmtree(settings.MEDIA_ROOT / "outputs" / str(job_id), ignore_errors=True)


def test_reproduce_shows_identical(studio_server, celery_worker, browser, alice,
                                   tiny, outputs_cleaned):  # noqa: F811
    recipe = recipes.recipe_from_params({"prompt": "red circle", "model": tiny, "steps": 4,
                                         "seed": 42, "width": 32, "height": 32,
                                         "batch_size": 2})
    job = job_finished(services.job_submit(user=alice, recipe=recipe))
    outputs_cleaned.append(job.pk)
    assert job.status == "succeeded", job.error
    image = Image.objects.get(output__job=job, output__index=1)  # the second of its batch

    page = signed_in(browser, studio_server, alice).new_page()
    page.goto(studio_server.url + image.get_absolute_url())
    page.get_by_role("button", name="Reproduce and verify").click()
    reproduction = Reproduction.objects.get(image=image)
    outputs_cleaned.append(reproduction.job_id)
    verdict = page.locator(".reproduction .verdict strong")
    verdict.wait_for(timeout=120_000)  # the page polls, then reloads with the verdict
    assert verdict.inner_text() == "identical"
    assert page.locator(".reproduction img").count() == 2
    reproduction.refresh_from_db()
    assert (reproduction.verdict, reproduction.max_diff, reproduction.psnr) == (
        "identical", 0, None)

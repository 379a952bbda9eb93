"""The generate page's HTTP side: validation by field, limits, the blocklist, staff queue."""

import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from generation import services
from generation.models import BlockedPhrase, Job

pytestmark = pytest.mark.django_db


def post(client, **params):
    data = {"prompt": "red circle", "model": "tiny", "steps": "4", "width": "32", "height": "32",
            **params}
    return client.post(reverse("job_submit"), data)


def test_the_page_needs_a_login(client):
    assert client.get(reverse("generate")).status_code == 302


def test_the_page_lists_models_and_samplers(client, alice, tiny):
    client.force_login(alice)
    page = client.get(reverse("generate")).content.decode()
    assert '<option value="tiny"' in page and '<option value="Euler a"' in page


def test_a_valid_submission_queues_a_job_with_a_recorded_seed(client, alice, tiny):
    client.force_login(alice)
    response = post(client)
    assert response.status_code == 201
    job = Job.objects.get(pk=response.json()["job"]["id"])
    assert job.owner == alice and 0 <= job.recipe["seed"] < 2**32
    assert response.json()["job"]["queue_position"] == 0


def test_each_bad_field_gets_its_own_error(client, alice, tiny):
    client.force_login(alice)
    response = post(client, steps="0", width="33", guidance_scale="abc", sampler="Nope")
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert set(errors) == {"guidance_scale"}  # typing errors come first, alone
    errors = post(client, steps="0", width="33", sampler="Nope").json()["errors"]
    assert {"steps", "width", "sampler"} <= set(errors)
    assert "multiple of 8" in errors["width"]


def test_an_unknown_model_is_named(client, alice, tiny):
    client.force_login(alice)
    errors = post(client, model="nope").json()["errors"]
    assert "Unknown model" in errors["model"]


def test_the_queued_limit_answers_429_with_its_message(client, alice, tiny, settings):
    settings.STUDIO_MAX_QUEUED_PER_USER = 1
    client.force_login(alice)
    assert post(client).status_code == 201
    response = post(client)
    assert response.status_code == 429 and response["Retry-After"]
    assert "the limit is 1" in response.json()["errors"]["__all__"]


def test_the_per_minute_limit_answers_429_with_when_to_retry(client, alice, tiny, settings):
    settings.STUDIO_MAX_SUBMITS_PER_MINUTE = 1
    client.force_login(alice)
    post(client)
    response = post(client)
    assert response.status_code == 429
    assert f"Try again in {response['Retry-After']} s" in response.json()["errors"]["__all__"]


def test_a_blocked_phrase_is_refused_at_submit(client, alice, tiny):
    BlockedPhrase.objects.create(phrase="Circle")
    client.force_login(alice)
    response = post(client)
    assert response.status_code == 400
    assert "“Circle”" in response.json()["errors"]["prompt"]
    assert not Job.objects.exists()


def test_only_the_owner_reads_or_cancels_a_job(client, alice, carol, tiny):
    client.force_login(alice)
    job_id = post(client).json()["job"]["id"]
    client.force_login(carol)
    assert client.get(reverse("job_detail", args=[job_id])).status_code == 404
    assert client.post(reverse("job_cancel", args=[job_id])).status_code == 404
    client.force_login(alice)
    assert client.post(reverse("job_cancel", args=[job_id])).json()["job"]["status"] == "canceled"


def test_the_staff_queue_page_shows_the_queue_per_user(client, alice, admin, tiny):
    client.force_login(alice)
    post(client)
    post(client)
    assert client.get(reverse("staff_queue")).status_code == 302
    client.force_login(admin)
    page = client.get(reverse("staff_queue"))
    assert page.status_code == 200
    assert page.context["queues"] == [{"owner__username": "alice", "queued": 2, "running": 0}]


def test_recent_jobs_lists_every_unfinished_job_and_the_latest_ten_finished(
    client, alice, bob, tiny
):
    client.force_login(alice)
    for _ in range(14):
        post(client)
    oldest = Job.objects.order_by("queued_at").values_list("pk", flat=True)[:12]
    Job.objects.filter(pk__in=list(oldest)).update(status=Job.Status.SUCCEEDED)
    client.force_login(bob)
    post(client)
    client.force_login(alice)
    recent = client.get(reverse("generate")).context["recent_jobs"]
    statuses = [job.status for job in recent]
    assert statuses == ["queued"] * 2 + ["succeeded"] * 10
    assert [job.queued_at for job in recent] == sorted(
        (job.queued_at for job in recent), reverse=True
    )
    Job.objects.filter(owner=alice, status=Job.Status.SUCCEEDED).update(
        queued_at=timezone.now() + timedelta(minutes=1)
    )
    recent = client.get(reverse("generate")).context["recent_jobs"]
    assert [job.status for job in recent] == ["succeeded"] * 10 + ["queued"] * 2


def test_the_staff_queue_page_shows_each_heartbeats_age_and_marks_a_stale_one(
    client, alice, admin, tiny
):
    client.force_login(alice)
    post(client)
    post(client)
    now = timezone.now()
    fresh = services.job_claim_next(worker="gpu0@host")
    stale = services.job_claim_next(worker="gpu1@host")
    Job.objects.filter(pk=fresh.pk).update(heartbeat=now - timedelta(seconds=7))
    Job.objects.filter(pk=stale.pk).update(
        heartbeat=now - timedelta(seconds=settings.STUDIO_HEARTBEAT_TIMEOUT + 30)
    )
    client.force_login(admin)
    page = client.get(reverse("staff_queue")).content.decode()
    ages = re.findall(r"<td( class=\"stale\"[^>]*)?>(\d+) s ago</td>", page)
    # The page is drawn a moment after `now`: allow it a second.
    timeout = settings.STUDIO_HEARTBEAT_TIMEOUT
    stale_by_age = {int(age): bool(stale) for stale, age in ages}
    fresh_age, stale_age = sorted(stale_by_age)
    assert fresh_age in (7, 8) and not stale_by_age[fresh_age]
    assert stale_age in (timeout + 30, timeout + 31) and stale_by_age[stale_age]
    assert "gpu0@host" in page and "gpu1@host" in page


def test_a_nul_character_in_the_prompt_is_a_field_error(client, alice, tiny):
    client.force_login(alice)
    response = post(client, prompt="red\x00circle")
    assert response.status_code == 400 and "NUL" in response.json()["errors"]["prompt"]

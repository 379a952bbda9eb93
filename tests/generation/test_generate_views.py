"""The generate page's HTTP side: validation by field, limits, the blocklist, staff queue."""

import json
import re
import shutil
from datetime import timedelta

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from generation import engine, job_request, services
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


# --- The form, drawn from the request's declaration ---------------------------------------


def field_tag(page: str, name: str) -> str:
    """The <input>, <select> or <textarea> tag of a form field."""
    return re.search(rf'<(?:input|select|textarea)[^>]*name="{name}"[^>]*>', page).group(0)


def test_the_form_has_every_request_field_with_its_label_help_and_limits(client, alice, tiny):
    client.force_login(alice)
    page = client.get(reverse("generate")).content.decode()
    for field in job_request.FIELDS:
        assert f'data-field="{field.name}"' in page and f'data-error-for="{field.name}"' in page
        assert f'<label for="id_{field.name}">{field.label}</label>' in page
        assert escape(field.help) in page
    assert 'max="1000"' in field_tag(page, "steps") and 'min="1"' in field_tag(page, "steps")
    assert 'max="30.0"' in field_tag(page, "guidance_scale")
    assert 'step="0.5"' in field_tag(page, "guidance_scale")
    assert f'max="{engine.MAX_BATCH}"' in field_tag(page, "batch_size")
    assert f'max="{engine.SEED_MAX}"' in field_tag(page, "seed")
    assert 'placeholder="random"' in field_tag(page, "seed")
    assert 'step="8"' in field_tag(page, "width")


@pytest.fixture
def big(settings, tiny_model, tmp_path) -> str:
    """A model whose native size is 512: the tiny model with a bigger UNet sample size in its
    config (the page reads configs, never weights), registered as "big"."""
    path = tmp_path / "big"
    shutil.copytree(tiny_model, path)
    config = path / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "sample_size": 128}))
    settings.STUDIO_MODELS = {**settings.STUDIO_MODELS, "big": str(path)}
    return "big"


def test_the_page_opens_at_the_default_models_native_size_and_limits(
    client, alice, big, settings
):
    settings.STUDIO_DEFAULT_MODEL = big
    client.force_login(alice)
    page = client.get(reverse("generate")).content.decode()
    for name in ("width", "height"):
        tag = field_tag(page, name)
        assert 'value="512"' in tag and 'min="32"' in tag and 'max="2048"' in tag
    assert '<option value="big" selected>' in page


def test_the_page_opens_at_the_chosen_models_native_size(client, alice, big, tiny):
    client.force_login(alice)
    page = client.get(reverse("generate"), {"model": tiny}).content.decode()
    assert 'value="32"' in field_tag(page, "width")
    page = client.get(reverse("generate"), {"model": big, "width": "256"}).content.decode()
    assert 'value="256"' in field_tag(page, "width")
    assert 'value="512"' in field_tag(page, "height")

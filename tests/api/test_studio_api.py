"""Studio's own API at /api/v1/: tokens, jobs, images, models, samplers, teams,
errors that name the field, and the same limits and visibility rules as the pages."""

import pytest
from django.test import Client

from gallery.models import Image, Visibility
from generation.models import Job

pytestmark = pytest.mark.django_db

API = "/api/v1"


@pytest.fixture
def api(token):
    """A client that sends a user's API token."""

    def as_user(user) -> Client:
        return Client(headers={"Authorization": f"Bearer {token(user)}"})

    return as_user


def submit(client, **fields):
    body = {"prompt": "red circle", "steps": 4, "width": 32, "height": 32, "seed": 42, **fields}
    return client.post(f"{API}/jobs", body, content_type="application/json")


def test_it_refuses_a_missing_or_bad_token(client):
    for headers in ({}, {"Authorization": "Bearer st_not-a-token"}, {"Authorization": "Basic x"}):
        response = client.get(f"{API}/jobs", headers=headers)
        assert response.status_code == 401
        assert "__all__" in response.json()["errors"]


def test_it_submits_a_job_with_the_pages_validation(api, alice, tiny):
    response = submit(api(alice), sampler="Euler a")
    assert response.status_code == 201
    job = Job.objects.get(pk=response.json()["id"])
    assert job.owner == alice and job.status == "queued"
    assert job.recipe["sampler"] == "Euler a" and job.recipe["seed"] == 42
    assert job.recipe["model"]["name"] == "tiny"


def test_errors_name_the_field(api, alice, tiny):
    client = api(alice)
    out_of_range = submit(client, steps=0)
    assert out_of_range.status_code == 400 and list(out_of_range.json()["errors"]) == ["steps"]
    wrong_type = submit(client, steps="many")
    assert wrong_type.status_code == 400 and list(wrong_type.json()["errors"]) == ["steps"]
    several = submit(client, sampler="Nope", width=33).json()["errors"]
    assert set(several) == {"sampler", "width"}
    missing = client.post(f"{API}/jobs", {}, content_type="application/json")
    assert missing.status_code == 400 and "prompt" in missing.json()["errors"]
    assert Job.objects.count() == 0


def test_limits_apply_with_retry_after(api, alice, tiny, settings):
    settings.STUDIO_MAX_QUEUED_PER_USER = 1
    client = api(alice)
    assert submit(client).status_code == 201
    refused = submit(client)
    assert refused.status_code == 429 and refused["Retry-After"] == "5"
    assert "limit is 1" in refused.json()["errors"]["__all__"]


def test_only_the_owner_sees_and_cancels_a_job(api, alice, carol, admin, tiny):
    job_id = submit(api(alice)).json()["id"]
    assert api(carol).get(f"{API}/jobs/{job_id}").status_code == 404
    assert api(carol).post(f"{API}/jobs/{job_id}/cancel").status_code == 404
    assert api(admin).get(f"{API}/jobs/{job_id}").status_code == 200
    assert api(admin).post(f"{API}/jobs/{job_id}/cancel").status_code == 404
    canceled = api(alice).post(f"{API}/jobs/{job_id}/cancel")
    assert canceled.json()["status"] == "canceled"


def test_it_lists_my_jobs_by_page(api, alice, bob, tiny):
    for seed in range(3):
        submit(api(alice), seed=seed)
    submit(api(bob))
    listing = api(alice).get(f"{API}/jobs", {"limit": 2}).json()
    assert listing["count"] == 3 and len(listing["items"]) == 2
    assert api(alice).get(f"{API}/jobs", {"limit": 0}).json()["errors"].keys() == {"limit"}


def test_it_lists_models_samplers_and_teams(api, alice, team, tiny):
    client = api(alice)
    models = client.get(f"{API}/models").json()
    assert {"name": "tiny", "default": True, "family": "sd1", "native_size": 32} in models
    assert {"name": "studio-demo", "default": False, "family": "sd1", "native_size": 64} in models
    samplers = {s["name"]: s["scheduler"] for s in client.get(f"{API}/samplers").json()}
    assert samplers["Euler a"] == "EulerAncestralDiscreteScheduler"
    assert client.get(f"{API}/teams").json() == [
        {"id": str(team.pk), "name": "Shapes", "role": "owner"}
    ]


def test_images_follow_the_gallery_visibility_rules(api, alice, bob, carol, team, make_image):
    private = make_image(alice, prompt="a blue square")
    public = make_image(alice, Visibility.PUBLIC, prompt="a red circle")
    assert api(carol).get(f"{API}/images/{private.pk}").status_code == 404
    assert api(carol).get(f"{API}/images/{public.pk}").json()["prompt"] == "a red circle"
    found = api(carol).get(f"{API}/images", {"q": "circle"}).json()
    assert [i["id"] for i in found["items"]] == [str(public.pk)]
    mine = api(alice).get(f"{API}/images", {"scope": "mine"}).json()
    assert mine["count"] == 2
    detail = api(alice).get(f"{API}/images/{private.pk}").json()
    assert detail["recipe"]["seed"] == 7


def test_the_owner_changes_visibility(api, alice, bob, team, make_image):
    image = make_image(alice)
    url = f"{API}/images/{image.pk}"
    assert api(bob).get(url).status_code == 404
    no_team = api(alice).patch(url, {"visibility": "team"}, content_type="application/json")
    assert no_team.status_code == 400 and "team" in no_team.json()["errors"]
    shared = api(alice).patch(url, {"visibility": "team", "team": str(team.pk)},
                              content_type="application/json")
    assert shared.json()["visibility"] == "team"
    assert api(bob).get(url).status_code == 200
    by_bob = api(bob).patch(url, {"visibility": "public"}, content_type="application/json")
    assert by_bob.status_code == 403
    bad = api(alice).patch(url, {"visibility": "everyone"}, content_type="application/json")
    assert list(bad.json()["errors"]) == ["visibility"]
    assert Image.objects.get(pk=image.pk).visibility == "team"


def test_the_png_needs_a_token_or_a_signed_link(api, alice, carol, make_image):
    from studio.api import signed_url

    image = make_image(alice)
    path = f"{API}/images/{image.pk}/file"
    png = api(alice).get(path)
    assert png.status_code == 200 and png.getvalue()[:4] == b"\x89PNG"
    assert Client().get(path).status_code == 401
    assert api(carol).get(path).status_code == 404
    assert Client().get(signed_url(path, user=alice)).status_code == 200
    # A signature is for one path and one user's access.
    other = make_image(alice)
    forged = signed_url(path, user=alice).replace(str(image.pk), str(other.pk))
    assert Client().get(forged).status_code == 401
    assert Client().get(signed_url(path, user=carol)).status_code == 404


def test_the_browser_session_works_with_csrf(alice, tiny):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    assert browser.get(f"{API}/jobs").status_code == 200
    refused = browser.post(f"{API}/jobs", {"prompt": "red circle"}, content_type="application/json")
    assert refused.status_code == 403
    browser.get("/profile/")  # sets the CSRF cookie
    csrf = browser.cookies["csrftoken"].value
    accepted = browser.post(f"{API}/jobs", {"prompt": "red circle"},
                            content_type="application/json", headers={"X-CSRFToken": csrf})
    assert accepted.status_code == 201


def test_the_schema_and_docs_are_served(client):
    schema = client.get(f"{API}/schema").json()
    assert schema["info"]["title"] == "Studio API"
    assert {"/api/v1/jobs", "/api/v1/images", "/api/v1/teams"} <= set(schema["paths"])
    assert "swagger" in client.get(f"{API}/docs").content.decode().lower()

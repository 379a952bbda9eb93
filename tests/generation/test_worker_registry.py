"""The worker registry (generation/worker_registry.py) on the real Redis: who is up, which
models each can load, what submit refuses, what a waiting job's state says, what a worker
claims and when it passes a message on. Workers elsewhere are written as they write
themselves (worker_registry.report); tests/generation/test_models_per_host.py runs real ones.
"""

import socket
import time

import pytest
from django.conf import settings
from django.urls import reverse
from redis import Redis

from generation import claims, job_request, presenters, recipes, selectors, services
from generation import worker_registry as registry
from generation.models import Job

pytestmark = pytest.mark.django_db

HERE = socket.gethostname()
ELSEWHERE = "gpu0@elsewhere.test"  # a worker on another host


@pytest.fixture(autouse=True)
def empty_registry():
    """This test run's registry (its keys are named after the run's own queue), emptied."""
    client = Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete(*registry.keys())
    registry.withdraw(ELSEWHERE)  # and this process reads it again
    yield
    client.delete(*registry.keys())


def report(node=ELSEWHERE, models=("tiny",), holds=(), **fields):
    registry.report(node, models=models, holds=holds, device="cuda", **fields)


def submit(user, model="tiny"):
    # Seeds far apart, so batching may merge these jobs (docs/architecture.md §3.3).
    params = {"prompt": "red circle", "model": model, "steps": 4, "width": 32, "height": 32,
              "seed": 100 + Job.objects.count()}
    return services.job_submit(user=user, recipe=recipes.recipe_from_params(params))


# --- Who is up ----------------------------------------------------------------------------


def test_a_reported_worker_is_up_with_its_models_and_what_it_holds():
    report(models=["sdxl", "tiny"], holds=["tiny"])
    [worker] = registry.live_workers()
    assert worker["name"] == ELSEWHERE and worker["host"] == "elsewhere.test"
    assert worker["models"] == ["sdxl", "tiny"] and worker["holds"] == ["tiny"]
    assert worker["device"] == "cuda" and worker["draining"] is False
    assert registry.models_available() == {"sdxl", "tiny"}


def test_a_worker_silent_for_longer_than_the_stale_time_is_not_up():
    report(seen=time.time() - registry.STALE_SECONDS - 1)
    report("gpu1@elsewhere.test", models=["sdxl"])
    assert [worker["name"] for worker in registry.live_workers()] == ["gpu1@elsewhere.test"]


def test_a_long_gone_worker_is_forgotten_by_the_next_report():
    report(seen=time.time() - registry.FORGET_SECONDS - 1)
    report("gpu1@elsewhere.test")
    base, _ = registry.keys()
    assert Redis.from_url(settings.CELERY_BROKER_URL).hkeys(base) == [b"gpu1@elsewhere.test"]


def test_a_draining_worker_is_up_but_offers_no_model():
    report()
    registry.mark_draining(ELSEWHERE, True)
    [worker] = registry.live_workers()
    assert worker["draining"] and registry.models_available() is None
    registry.mark_draining(ELSEWHERE, False)
    assert registry.models_available() == {"tiny"}


def test_a_worker_stopped_cleanly_leaves_at_once():
    report()
    registry.mark_draining(ELSEWHERE, True)
    registry.withdraw(ELSEWHERE)
    assert registry.live_workers() == [] and registry.models_available() is None


# --- Submit -------------------------------------------------------------------------------


def test_with_no_worker_reporting_a_job_is_queued_and_says_it_waits_for_one(alice, tiny):
    job = submit(alice)
    assert job.status == "queued"
    assert registry.waiting_reason("tiny", registry.live_workers()) == "no worker is up"


def test_a_model_no_worker_up_can_load_is_refused_with_the_field_named(alice, tiny, caplog):
    report(models=["sdxl"])
    report("gpu1@elsewhere.test", models=["sdxl"])
    with pytest.raises(job_request.Refused) as refused:
        recipes.submit(user=alice, request=job_request.parse(
            {"prompt": "red circle", "model": "tiny", "steps": 4, "width": 32, "height": 32}))
    message = refused.value.errors["model"]
    assert "“tiny”" in message and "(2 workers up)" in message
    # The workers' names are host names: for the operator's log, not for the user.
    assert "elsewhere.test" not in message
    assert f"{ELSEWHERE}, gpu1@elsewhere.test" in caplog.text
    assert refused.value.status(400) == 400
    assert not Job.objects.exists()


def test_the_generate_form_shows_the_refusal_by_the_model_field(client, alice, tiny):
    report(models=["sdxl"])
    client.force_login(alice)
    response = client.post(reverse("job_submit"), {"prompt": "red circle", "model": "tiny",
                                                   "steps": "4", "width": "32", "height": "32"})
    assert response.status_code == 400
    assert "No worker that is up can load the model “tiny”" in response.json()["errors"]["model"]


def test_a_model_one_worker_up_can_load_is_queued(alice, tiny):
    report(models=["sdxl"])
    report("gpu1@elsewhere.test", models=["tiny"])
    assert submit(alice).status == "queued"


def test_a_worker_on_this_host_loads_what_this_host_has_even_unlisted(alice, tiny):
    """The runner loads the recipe's source: a worker that sees this process's files can run
    a model its own settings do not name (as the tests' workers run `tiny`)."""
    report(f"gpu0@{HERE}", models=["sdxl"])
    assert submit(alice).status == "queued"
    report(f"gpu0@{HERE}", models=["sdxl"], root="another-container")
    with pytest.raises(services.NoWorkerForModel):
        submit(alice)


def test_a_job_for_a_draining_workers_model_waits_for_it(alice, tiny):
    report(models=["tiny"])
    report("gpu1@elsewhere.test", models=["sdxl"])
    registry.mark_draining(ELSEWHERE, True)
    job = submit(alice)
    assert presenters.job_state(selectors.job_view(job))["waiting"] == (
        "every worker that has the model “tiny” is draining")
    registry.mark_draining(ELSEWHERE, False)
    assert presenters.job_state(selectors.job_view(job))["waiting"] is None


def test_a_queued_job_whose_worker_left_says_so_and_a_running_one_says_nothing(alice, tiny):
    report(models=["tiny"])
    job = submit(alice)
    assert presenters.job_state(selectors.job_view(job))["waiting"] is None
    registry.withdraw(ELSEWHERE)
    report("gpu1@elsewhere.test", models=["sdxl"])
    assert registry.waiting_reason("tiny", registry.live_workers()) == (
        "no worker that is up has the model “tiny”")
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    job.refresh_from_db()
    assert presenters.job_state(selectors.job_view(job))["waiting"] is None


# --- Claims -------------------------------------------------------------------------------


def test_a_claim_passes_the_jobs_of_models_only_other_workers_list(alice, bob, tiny):
    theirs, mine = submit(alice), submit(bob)
    Job.objects.filter(pk=theirs.pk).update(recipe={**theirs.recipe, "model": {
        **theirs.recipe["model"], "name": "sdxl"}})
    served = claims.ClaimFilter(mine=frozenset({"tiny"}), theirs=("sdxl",))
    assert claims.claim(worker="w", holds=None, served=served) == [mine]
    assert claims.claim(worker="w", holds=None, served=served) == []
    assert claims.claim(worker="w", holds=None, served=None)[0].pk == theirs.pk


def test_a_claimed_job_this_worker_cannot_load_goes_back_untouched(alice, bob, tiny):
    gone, here = submit(alice), submit(bob)
    model = {**gone.recipe["model"], "name": "nowhere", "source": "/nonexistent/model"}
    Job.objects.filter(pk=gone.pk).update(recipe={**gone.recipe, "model": model})
    served = claims.ClaimFilter(mine=frozenset(), theirs=())
    assert services.job_claim_next(worker="w", can_run=served.can_run).pk == here.pk
    gone.refresh_from_db()
    assert (gone.status, gone.attempt, gone.worker) == ("queued", 0, "")
    assert services.job_claim_next(worker="w", can_run=served.can_run) is None


@pytest.mark.parametrize("by_plan", [False, True], ids=["one-statement", "by-plan"])
def test_any_number_of_orphaned_models_ahead_never_hide_a_job_this_worker_can_run(
        settings, django_user_model, tiny, by_plan):
    """Their only worker went away: eight users' oldest jobs for eight models nobody has, all
    ahead of the one job this worker can run in the fair order."""
    settings.STUDIO_BATCH_MAX = 4 if by_plan else 1
    for number in range(8):
        gone = submit(django_user_model.objects.create_user(f"user{number}"))
        model = {**gone.recipe["model"], "name": f"gone{number}", "source": "/nonexistent/m"}
        Job.objects.filter(pk=gone.pk).update(recipe={**gone.recipe, "model": model})
    here = submit(django_user_model.objects.create_user("last"))
    served = claims.ClaimFilter(mine=frozenset({"tiny"}), theirs=())
    assert [job.pk for job in claims.claim(worker="w", holds=None, served=served)] == [here.pk]
    assert Job.objects.filter(status="queued").count() == 8


def test_a_claim_by_plan_keeps_to_the_models_too(settings, alice, bob, carol, tiny):
    settings.STUDIO_BATCH_MAX = 4
    jobs = [submit(user) for user in (alice, bob, carol)]
    Job.objects.filter(pk=jobs[0].pk).update(recipe={**jobs[0].recipe, "model": {
        **jobs[0].recipe["model"], "name": "sdxl"}})
    served = claims.ClaimFilter(mine=frozenset({"tiny"}), theirs=("sdxl",))
    claimed = claims.claim(worker="w", holds=None, served=served)
    assert [job.pk for job in claimed] == [jobs[1].pk, jobs[2].pk]
    assert claims.claim(worker="w", holds=None, served=served) == []


def test_a_message_for_another_workers_job_is_passed_on(celery_queue, alice, tiny):
    job = submit(alice)
    celery_queue.clear()  # as if this worker had taken the job's message
    Job.objects.filter(pk=job.pk).update(recipe={**job.recipe, "model": {
        **job.recipe["model"], "name": "sdxl"}})
    assert not claims.pass_on(claims.ClaimFilter(mine=frozenset({"tiny"}), theirs=()))
    assert celery_queue.backlog() == 0
    assert claims.pass_on(claims.ClaimFilter(mine=frozenset({"tiny"}), theirs=("sdxl",)))
    assert celery_queue.backlog() == 1


# --- The staff page -----------------------------------------------------------------------


def test_the_staff_page_lists_each_worker_with_its_models_and_marks_those_loaded(
        client, admin):
    report(models=["sdxl", "tiny"], holds=["tiny"])
    report("gpu1@elsewhere.test", models=["sdxl"])
    registry.mark_draining("gpu1@elsewhere.test", True)
    client.force_login(admin)
    page = client.get(reverse("staff_queue"))
    rows = {worker["name"]: worker for worker in page.context["workers"]}
    assert rows[ELSEWHERE]["models"] == ["sdxl", "tiny"] and rows[ELSEWHERE]["busy"] is None
    html = page.content.decode()
    assert 'sdxl, <strong title="Loaded now">tiny</strong>' in html
    assert '<tr class="draining">' in html and "gpu1@elsewhere.test" in html


def test_a_worker_runs_its_own_copy_of_a_model_the_web_server_keeps_elsewhere(alice, tiny):
    from generation import registry as model_registry
    from generation import runner

    job = submit(alice)
    here = job.recipe["model"]["source"]
    assert runner._recipe(job).model.source == here
    job.recipe["model"]["source"] = "/srv/web-host-only/models/tiny"  # not on this host
    recipe = runner._recipe(job)
    assert recipe.model.source == model_registry.models()["tiny"] == here
    assert recipe.model.hash == job.recipe["model"]["hash"]  # still checked against the recipe

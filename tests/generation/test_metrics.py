"""GET /metrics: who may read it, and that its figures are real: jobs run by a real worker
(and in this process, through the runner) move them, each end counted once."""

import math
import time
from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse
from django.utils import timezone
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from generation import claims, metrics, metrics_view, recipes, runner, services, sidecar, tasks
from generation.models import Job
from tests.conftest import Worker, free_port, job_finished

STEPS = 4


def scrape(client, **extra) -> dict:
    """The figures as Prometheus parses them: {(sample name, frozenset of labels): value}."""
    response = client.get("/metrics", **extra)
    assert response.status_code == 200, response.status_code
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.content.decode())
            for sample in family.samples}


def value(figures: dict, name: str, **labels) -> float:
    return figures.get((name, frozenset(labels.items())), 0.0)


def buckets(figures: dict, name: str, **labels) -> list[tuple[float, float]]:
    """A histogram's cumulative buckets, by upper bound."""
    return sorted((float(dict(key)["le"]), count) for (sample, key), count in figures.items()
                  if sample == f"{name}_bucket"
                  and {k: v for k, v in key if k != "le"} == labels)


def eventually(check, timeout: float = 30):
    """A worker records a job's end just after the job's row says it ended."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the figures did not move")
        time.sleep(0.1)


@pytest.fixture
def staff(client, admin):
    client.force_login(admin)
    return client


def submit(user, model, **params) -> Job:
    params = {"prompt": "red circle", "model": model, "steps": STEPS, "seed": 42,
              "width": 32, "height": 32, **params}
    return services.job_submit(user=user, recipe=recipes.recipe_from_params(params))


# --- Who may read it ------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_is_a_404_for_anonymous_clients_and_users_who_are_not_staff(client, alice):
    assert client.get("/metrics").status_code == 404
    client.force_login(alice)
    assert client.get("/metrics").status_code == 404


@pytest.mark.django_db
def test_staff_read_it(staff):
    assert reverse("metrics") == "/metrics"
    assert value(scrape(staff), "studio_metrics_source_up", source="postgres") == 1


@pytest.mark.django_db
def test_it_only_allows_get_and_head(staff):
    assert staff.post("/metrics").status_code == 405
    assert staff.head("/metrics").status_code == 200


@pytest.mark.django_db
def test_a_scraper_reads_it_with_the_bearer_token_and_nothing_else(client, settings):
    settings.STUDIO_METRICS_TOKEN = "a-long-random-token"
    scrape(client, headers={"Authorization": "Bearer a-long-random-token"})
    for wrong in ("Bearer a-long-random-toke", "Bearer ", "Basic a-long-random-token",
                  "a-long-random-token"):
        assert client.get("/metrics", headers={"Authorization": wrong}).status_code == 404


@pytest.mark.django_db
def test_an_empty_token_setting_lets_no_token_in(client, settings):
    settings.STUDIO_METRICS_TOKEN = ""
    for header in ("Bearer ", "Bearer", "bearer  "):
        assert client.get("/metrics", headers={"Authorization": header}).status_code == 404


@pytest.mark.django_db
def test_addresses_in_the_allow_list_read_it(client, settings):
    settings.STUDIO_METRICS_ALLOW = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
    for address in ("10.1.2.3", "192.0.2.7", "::ffff:10.9.9.9", "2001:db8::1"):
        scrape(client, REMOTE_ADDR=address)
    for address in ("192.0.2.8", "11.0.0.1", "2001:db9::1", "", "unix"):
        assert client.get("/metrics", REMOTE_ADDR=address).status_code == 404
    # A forwarded-for header is the client's word, not its address.
    refused = client.get("/metrics", REMOTE_ADDR="203.0.113.5",
                         headers={"X-Forwarded-For": "10.1.2.3"})
    assert refused.status_code == 404


def test_an_allow_list_entry_that_is_not_an_address_is_refused_by_name(settings):
    settings.STUDIO_METRICS_ALLOW = ["10.0.0.0/8", "intranet"]
    with pytest.raises(ImproperlyConfigured, match="'intranet'"):
        metrics_view.address_allowed("10.0.0.1")


# --- The figures ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_queue_per_state_is_counted_from_the_jobs(staff, alice, bob, tiny):
    for user in (alice, alice, bob):
        submit(user, tiny)
    services.job_claim_next(worker="gpu0@host")
    assert value(scrape(staff), "studio_queue_oldest_wait_seconds") < 100
    Job.objects.filter(status=Job.Status.QUEUED).update(
        queued_at=timezone.now() - timedelta(seconds=100))
    Job.objects.create(owner=bob, recipe={}, status=Job.Status.SUCCEEDED)  # not in the queue
    figures = scrape(staff)
    assert value(figures, "studio_jobs", state="queued") == 2
    assert value(figures, "studio_jobs", state="running") == 1
    assert 100 <= value(figures, "studio_queue_oldest_wait_seconds") < 130


@pytest.mark.django_db
def test_the_text_is_valid_and_every_histogram_is_consistent(staff):
    figures = scrape(staff)
    for name, labels in (("studio_job_wait_seconds", {}), ("studio_step_seconds", {}),
                         ("studio_job_run_seconds", {"outcome": "succeeded"})):
        cumulative = buckets(figures, name, **labels)
        assert cumulative[-1][0] == math.inf
        counts = [count for _, count in cumulative]
        assert counts == sorted(counts)
        assert cumulative[-1][1] == value(figures, f"{name}_count", **labels)
    for source in ("postgres", "redis", "workers"):
        assert value(figures, "studio_metrics_source_up", source=source) == 1


@pytest.mark.django_db
def test_prometheus_gets_openmetrics_when_it_asks_for_it(staff):
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    response = staff.get("/metrics", headers={"Accept": accept})
    assert response["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    names = {family.name for family in openmetrics_families(response.content.decode())}
    assert {"studio_jobs", "studio_queue_oldest_wait_seconds", "studio_job_wait_seconds",
            "studio_job_run_seconds", "studio_step_seconds", "studio_jobs_finished",
            "studio_workers_alive", "studio_worker_models"} <= names


@pytest.fixture
def worker(transactional_db, tiny_model):
    """A real worker whose models include the tiny one, as a host's settings would list it."""
    worker = Worker(env={"STUDIO_MODELS": f"tiny={tiny_model}"})
    worker.start()
    yield worker
    worker.stop()


def test_jobs_run_by_a_worker_move_the_figures(client, admin, worker, alice, tiny):
    client.force_login(admin)
    before = scrape(client)
    jobs = [job_finished(submit(alice, tiny)) for _ in range(2)]
    assert [job.status for job in jobs] == ["succeeded", "succeeded"]

    def moved():
        after = scrape(client)
        return (value(after, "studio_jobs_finished_total", outcome="succeeded")
                - value(before, "studio_jobs_finished_total", outcome="succeeded")) == 2

    eventually(moved)
    after = scrape(client)
    grew = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert grew("studio_job_wait_seconds_count") == 2
    assert grew("studio_job_run_seconds_count", outcome="succeeded") == 2
    assert grew("studio_step_seconds_count") == 2 * STEPS
    assert grew("studio_job_run_seconds_sum", outcome="succeeded") > 0
    waited = sum((job.started_at - job.queued_at).total_seconds() for job in jobs)
    assert grew("studio_job_wait_seconds_sum") == pytest.approx(waited, abs=1e-3)
    assert value(after, "studio_workers_alive") >= 1
    # It publishes what it holds after each job.
    eventually(lambda: value(scrape(client), "studio_worker_models", worker=worker.name,
                             model="tiny", loaded="true") == 1)


def test_a_failed_job_counts_as_failed(client, admin, worker, alice, tiny):
    client.force_login(admin)
    before = scrape(client)
    recipe = recipes.recipe_from_params({"prompt": "red circle", "model": tiny, "steps": STEPS,
                                         "width": 32, "height": 32})
    # Made with other weights than this server's "tiny": the worker refuses to run it.
    recipe["model"]["hash"] = "0" * 64
    job = services.job_submit(user=alice, recipe=recipe)
    assert job_finished(job).status == "failed"
    eventually(lambda: value(scrape(client), "studio_jobs_finished_total", outcome="failed")
               == value(before, "studio_jobs_finished_total", outcome="failed") + 1)
    after = scrape(client)
    assert (value(after, "studio_job_run_seconds_count", outcome="failed")
            == value(before, "studio_job_run_seconds_count", outcome="failed") + 1)


@pytest.fixture
def ran_here(settings, tmp_path):
    """Jobs run by the runner in this process, as a worker runs them; its sidecar closed
    after."""
    settings.MEDIA_ROOT = tmp_path
    yield
    sidecar.get().close()


@pytest.mark.django_db(transaction=True)
def test_a_batch_counts_each_job_by_its_end_and_its_steps_once(
    settings, ran_here, people, tiny, staff
):
    settings.STUDIO_BATCH_MAX = 8
    for person in people:
        submit(person, tiny)
    jobs = claims.jobs_claim(worker="w")
    assert len(jobs) == 3
    Job.objects.filter(pk=jobs[1].pk).update(cancel_requested=True)
    before = scrape(staff)
    assert runner.run_batch(jobs) == "succeeded, canceled, succeeded"
    after = scrape(staff)
    for outcome, count in (("succeeded", 2), ("canceled", 1), ("failed", 0)):
        assert (value(after, "studio_jobs_finished_total", outcome=outcome)
                - value(before, "studio_jobs_finished_total", outcome=outcome)) == count
    assert (value(after, "studio_step_seconds_count")
            - value(before, "studio_step_seconds_count")) == STEPS


@pytest.fixture
def people(django_user_model):
    return [django_user_model.objects.create_user(f"user{i}", f"u{i}@example.com", "pw")
            for i in range(3)]


@pytest.mark.django_db(transaction=True)
def test_a_job_another_attempt_ended_is_not_counted_again(ran_here, alice, tiny, staff):
    submit(alice, tiny)
    job = services.job_claim_next(worker="w")
    # The reaper gave up on this attempt while it ran, and failed the job.
    Job.objects.filter(pk=job.pk).update(status=Job.Status.FAILED, finished_at=timezone.now())
    before = scrape(staff)
    assert runner.run(job) == "superseded"
    after = scrape(staff)
    for outcome in metrics.OUTCOMES:
        assert (value(after, "studio_jobs_finished_total", outcome=outcome)
                == value(before, "studio_jobs_finished_total", outcome=outcome))
    # The steps it ran before it heard it was no longer its to run are steps all the same.
    assert (value(after, "studio_step_seconds_count")
            - value(before, "studio_step_seconds_count")) >= 1


@pytest.mark.django_db(transaction=True)
def test_a_failure_after_the_reaper_failed_the_job_is_not_counted_again(
    ran_here, alice, tiny, staff
):
    recipe = recipes.recipe_from_params({"prompt": "red circle", "model": tiny, "steps": STEPS,
                                         "width": 32, "height": 32})
    recipe["model"]["hash"] = "0" * 64  # other weights than this server's: the run fails
    services.job_submit(user=alice, recipe=recipe)
    job = services.job_claim_next(worker="w")
    Job.objects.filter(pk=job.pk).update(status=Job.Status.FAILED, finished_at=timezone.now())
    before = scrape(staff)
    assert runner.run(job) == "superseded"
    after = scrape(staff)
    assert (value(after, "studio_jobs_finished_total", outcome="failed")
            == value(before, "studio_jobs_finished_total", outcome="failed"))


@pytest.mark.django_db
def test_a_job_the_reaper_fails_or_cancels_is_counted(settings, staff, alice, bob, tiny):
    settings.STUDIO_MAX_ATTEMPTS = 1
    for user in (alice, bob):
        submit(user, tiny)
    dead, canceled = (services.job_claim_next(worker="w") for _ in range(2))
    stale = timezone.now() - timedelta(seconds=settings.STUDIO_HEARTBEAT_TIMEOUT + 5)
    Job.objects.filter(pk__in=[dead.pk, canceled.pk]).update(heartbeat=stale)
    Job.objects.filter(pk=canceled.pk).update(cancel_requested=True)
    before = scrape(staff)
    tasks.reap_jobs()
    after = scrape(staff)
    for outcome in ("failed", "canceled"):
        assert (value(after, "studio_jobs_finished_total", outcome=outcome)
                - value(before, "studio_jobs_finished_total", outcome=outcome)) == 1
        assert (value(after, "studio_job_run_seconds_count", outcome=outcome)
                - value(before, "studio_job_run_seconds_count", outcome=outcome)) == 1


@pytest.mark.django_db
def test_a_job_canceled_while_queued_is_counted_and_never_ran(staff, alice, tiny):
    job = submit(alice, tiny)
    before = scrape(staff)
    assert services.job_cancel(job=job, actor=alice) == "canceled"
    after = scrape(staff)
    assert (value(after, "studio_jobs_finished_total", outcome="canceled")
            - value(before, "studio_jobs_finished_total", outcome="canceled")) == 1
    assert (value(after, "studio_job_run_seconds_count", outcome="canceled")
            == value(before, "studio_job_run_seconds_count", outcome="canceled"))


@pytest.mark.django_db
def test_without_redis_it_still_answers_and_says_what_it_could_not_read(
    settings, monkeypatch, staff, alice, tiny
):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    monkeypatch.setattr(metrics, "_client", None)
    submit(alice, tiny)
    figures = scrape(staff)
    assert value(figures, "studio_metrics_source_up", source="redis") == 0
    assert value(figures, "studio_jobs", state="queued") == 1
    assert not any(name.startswith("studio_job_wait") for name, _ in figures)
    job = Job.objects.get()
    job.status, job.finished_at = Job.Status.CANCELED, timezone.now()
    metrics.jobs_ended([job])  # logged, not raised: a job's end never fails on its figures


# --- The staff queue page -------------------------------------------------------------------


def test_the_last_hours_quantiles_are_estimated_as_prometheus_does():
    histogram = metrics.Histogram(buckets=[(1, 0), (2, 10), (5, 20), (math.inf, 20)], total=0)
    assert histogram.quantile(0.5) == 2  # the 10th of 20: the top of the (1, 2] bucket
    assert histogram.quantile(0.75) == pytest.approx(3.5)  # halfway through (2, 5]
    above = metrics.Histogram(buckets=[(1, 0), (math.inf, 4)], total=0)
    assert above.quantile(0.95) == 1  # above the highest bound: that bound
    assert metrics.Histogram(buckets=[(1, 0), (math.inf, 0)], total=0).quantile(0.5) is None


def test_the_staff_page_shows_the_figures_and_links_them(
    client, admin, celery_worker, alice, tiny
):
    client.force_login(admin)
    before = metrics_view.staff_figures()["recent"]
    job_finished(submit(alice, tiny))
    eventually(lambda: metrics_view.staff_figures()["recent"]["succeeded"]
               == before["succeeded"] + 1)
    recent = metrics_view.staff_figures()["recent"]
    assert recent["waits"] == before["waits"] + 1 and recent["wait_p50"] is not None
    assert recent["run_p95"] >= recent["run_p50"] > 0
    submit(alice, tiny, steps=400)  # running or queued, with the worker on it
    page = client.get(reverse("staff_queue"))
    figures = page.context["figures"]
    assert figures["queued"] + figures["running"] == 1
    html = page.content.decode()
    assert 'href="/metrics"' in html and 'id="figures"' in html

"""Batching compatible jobs (STUDIO_BATCH_MAX, docs/architecture.md §3.3 and §4.2): a claim
takes only heads of users' queues, never delays another user's turn, and each merged image
is the job's own, reproducible from its recipe."""

import base64
import io
import json
import subprocess
import sys
from dataclasses import replace

import psycopg
import pytest
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone
from PIL import Image as PILImage

from gallery.models import Image, Reproduction
from generation import claims, engine, recipes, runner, services, sidecar
from generation.batching import Head, plan_claim
from generation.models import Job
from tests.conftest import ROOT, Worker, job_finished

SIZE = 32  # the tiny model's VAE scales by 4: 8 latent pixels a side


def head(pk, owner, *, key="k", images=1, seed=100, model="m", deferred=0) -> Head:
    return Head(pk=pk, owner_id=owner, model=model, key=key, images=images, seed=seed,
                deferred=deferred)


def plan(heads, batch_max=8, max_defer=0, holds=None):
    return plan_claim(heads, holds=holds, batch_max=batch_max, max_defer=max_defer)


# --- The plan -------------------------------------------------------------------------------


def test_a_batch_takes_compatible_heads_in_fair_order_up_to_its_images():
    heads = [head(1, 1, images=2), head(2, 2, key="other"), head(3, 3, images=4),
             head(4, 4, images=3), head(5, 5, images=2)]
    chosen = plan(heads, batch_max=8)
    assert [h.pk for h in chosen.members] == [1, 3, 5]  # 2 + 4 + 2 images; 4's 3 do not fit
    assert [h.pk for h in chosen.passed] == [2, 4]


def test_a_job_that_runs_alone_is_never_joined_and_never_joins():
    assert [h.pk for h in plan([head(1, 1, key=None), head(2, 2)]).members] == [1]
    assert [h.pk for h in plan([head(1, 1), head(2, 2, key=None), head(3, 3)]).members] == [1, 3]


def test_batching_off_claims_the_head_alone():
    chosen = plan([head(1, 1), head(2, 2)], batch_max=1)
    assert [h.pk for h in chosen.members] == [1] and chosen.passed == []


def test_a_job_whose_seed_is_below_its_place_waits_for_the_next_claim():
    # Its recipe would record seed - place (engine.batches.merged_recipe), below 0.
    chosen = plan([head(1, 1, images=2), head(2, 2, seed=1), head(3, 3, seed=2)])
    assert [h.pk for h in chosen.members] == [1, 3]


# --- The claim, on the real database --------------------------------------------------------


@pytest.fixture
def people(django_user_model):
    return [django_user_model.objects.create_user(f"user{i}", f"u{i}@example.com", "pw")
            for i in range(6)]


def queue(owner, recipe: engine.Recipe, **fields) -> Job:
    return Job.objects.create(owner=owner, recipe=recipe.to_json(), total_steps=recipe.steps,
                              **fields)


@pytest.mark.django_db
def test_a_claim_batches_heads_of_users_queues_never_a_users_second_job(
    settings, people, make_recipe
):
    settings.STUDIO_BATCH_MAX = 8
    first = [queue(people[0], make_recipe(seed=10 + i)) for i in range(3)]
    others = [queue(person, make_recipe(seed=50)) for person in people[1:3]]
    claimed = claims.jobs_claim(worker="w")
    assert [job.pk for job in claimed] == [first[0].pk, *[job.pk for job in others]]
    assert all(job.status == Job.Status.RUNNING and job.attempt == 1 for job in claimed)
    assert Job.objects.filter(pk__in=[job.pk for job in first[1:]],
                              status=Job.Status.QUEUED).count() == 2


@pytest.mark.django_db
def test_reproductions_and_image_to_image_jobs_run_alone(settings, people, make_recipe):
    settings.STUDIO_BATCH_MAX = 8
    reproduction = queue(people[0], make_recipe(), reveals=0)
    queue(people[1], make_recipe())
    assert [job.pk for job in claims.jobs_claim(worker="w")] == [reproduction.pk]
    varied = make_recipe(subseed=3, subseed_strength=0.5)
    hires = replace(make_recipe(), hires=engine.Hires(scale=2.0, steps=0, strength=0.5,
                                                      upscaler="Latent"))
    for recipe in (varied, hires):
        assert engine.batch_key(recipe) is None
    assert engine.batch_key(make_recipe(sampler="DPM++ SDE Karras")) is None
    assert engine.batch_key(make_recipe(steps=5)) != engine.batch_key(make_recipe())


@pytest.mark.django_db(transaction=True)
def test_a_planned_claim_skips_a_head_another_worker_holds_without_waiting(
    settings, people, make_recipe
):
    """The next user's turn, never the held head's owner's second job, and no lock wait."""
    settings.STUDIO_BATCH_MAX = 8
    held, later = queue(people[0], make_recipe(seed=10)), queue(people[0], make_recipe())
    nexts = [queue(person, make_recipe(seed=50)) for person in people[1:3]]
    sql, head_params = services.claim_statement()
    db = connection.settings_dict
    with psycopg.connect(dbname=db["NAME"], user=db["USER"], host=db["HOST"],
                         port=db["PORT"] or 5432) as other:
        now = timezone.now()
        assert other.execute(sql, ["running", "w2", now, now, *head_params, "queued"]
                             ).fetchone()[0] == held.pk
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")  # a claim that waited would fail
        try:
            claimed = claims.jobs_claim(worker="w1")
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
        other.commit()
    assert [job.pk for job in claimed] == [job.pk for job in nexts]
    assert Job.objects.get(pk=later.pk).status == Job.Status.QUEUED


def claim_order(*, batch_max: int) -> dict[str, int]:
    """Claim until the queue is empty, each claim's jobs finishing before the next; the
    claim (1, 2, ...) that started each job, by its prompt."""
    order, claim = {}, 0
    while True:
        if batch_max > 1:
            jobs = claims.jobs_claim(worker="w")
        else:
            job = services.job_claim_next(worker="w")
            jobs = [] if job is None else [job]
        if not jobs:
            return order
        claim += 1
        for job in jobs:
            order[job.recipe["prompt"]] = claim
        Job.objects.filter(pk__in=[job.pk for job in jobs]).update(status=Job.Status.SUCCEEDED)


@pytest.mark.django_db
def test_batching_never_starts_another_users_job_later_than_without_it(
    settings, people, make_recipe
):
    # Six users, a mix of sizes and steps (two batch keys) and several jobs each.
    def fill():
        Job.objects.all().delete()
        for n in range(4):
            for i, person in enumerate(people):
                steps = 4 if (i + n) % 3 else 5
                queue(person, make_recipe(prompt=f"u{i} j{n}", steps=steps, seed=100,
                                          batch_size=1 + (i + n) % 3))

    fill()
    alone = claim_order(batch_max=1)
    fill()
    settings.STUDIO_BATCH_MAX = 4
    batched = claim_order(batch_max=4)
    assert set(alone) == set(batched) and max(batched.values()) < max(alone.values())
    later = {prompt: (batched[prompt], alone[prompt]) for prompt in alone
             if batched[prompt] > alone[prompt]}
    assert later == {}


@pytest.mark.django_db
def test_with_both_settings_off_workers_claim_as_before(settings, people, make_recipe):
    assert settings.STUDIO_BATCH_MAX == 1 and settings.STUDIO_AFFINITY_MAX_DEFER == 0
    assert not claims.claims_by_plan()
    settings.STUDIO_BATCH_MAX = 2
    assert claims.claims_by_plan()


# --- The engine: a merged image is the job's own ---------------------------------------------


@pytest.mark.parametrize("sampler", ["DDIM", "Euler a", "DPM++ 2M SDE"])
def test_a_batched_image_is_the_job_run_alone_and_its_recipe_reproduces_it(
    sampler, make_recipe, tiny_pipeline
):
    jobs = [make_recipe(prompt="red circle", seed=40, sampler=sampler),
            make_recipe(prompt="blue square", negative_prompt="green", seed=900,
                        batch_size=2, sampler=sampler),
            make_recipe(prompt="yellow", seed=5, sampler=sampler)]
    merged = engine.generate_batch(jobs, pipeline=tiny_pipeline, preview=None)
    assert [(r.seed, r.batch_size, r.batch_index, r.image_seed) for r in merged.recipes] == [
        (40, 4, 0, 40), (899, 4, 1, 900), (899, 4, 2, 901), (2, 4, 3, 5)]
    alone = engine.generate(jobs[1], pipeline=tiny_pipeline, preview=None)
    for ours, theirs in zip(merged.images[1:3], alone.images, strict=True):
        # A batch's size can change the low bits (docs/architecture.md §4.2).
        assert engine.compare_images(ours, theirs).verdict in ("identical", "within one level")
    for image, recipe in zip(merged.images, merged.recipes, strict=True):
        stored, _ = engine.read_png(engine.png_with_recipe(image, recipe))
        _, comparison = engine.reproduce(stored, image, pipeline=tiny_pipeline)
        assert comparison.verdict == "identical"


def test_recipes_that_differ_beyond_their_own_fields_cannot_share_a_batch(
    make_recipe, tiny_pipeline
):
    with pytest.raises(engine.GenerationError, match="cannot run as one batch"):
        engine.generate_batch([make_recipe(), make_recipe(steps=5)], pipeline=tiny_pipeline)


# --- The worker's side: one sidecar run, a job canceled alone --------------------------------


def preview_width(data_url: str) -> int:
    with PILImage.open(io.BytesIO(base64.b64decode(data_url.partition(",")[2]))) as picture:
        return picture.width


@pytest.fixture
def claimed(settings, people, make_recipe, tmp_path):
    """Three users' jobs (1, 2 and 1 images) claimed as one batch."""
    settings.STUDIO_BATCH_MAX = 8
    settings.MEDIA_ROOT = tmp_path
    for person, size in zip(people, (1, 2, 1), strict=False):
        queue(person, make_recipe(prompt=f"job of {person.username}", seed=70,
                                  batch_size=size))
    jobs = claims.jobs_claim(worker="w")
    assert len(jobs) == 3
    yield jobs
    sidecar.get().close()  # the runner forked it; its database connection ends with it


@pytest.mark.django_db(transaction=True)
def test_a_job_canceled_in_a_batch_ends_canceled_and_the_others_keep_their_images(claimed):
    first, canceled, last = claimed
    Job.objects.filter(pk=canceled.pk).update(cancel_requested=True)
    assert runner.run_batch(claimed) == "succeeded, canceled, succeeded"
    for job in claimed:
        job.refresh_from_db()
    assert canceled.status == Job.Status.CANCELED and not canceled.outputs.exists()
    for job in (first, last):
        assert job.status == Job.Status.SUCCEEDED and job.timings["batched_jobs"] == 3
        output = job.outputs.get()
        assert (output.index, output.recipe["batch_size"]) == (0, 4)
        # Its own frames, one image wide: never its neighbours' pixels.
        assert {preview_width(frame["image"]) for frame in output.trajectory} == {SIZE // 4}


@pytest.mark.django_db(transaction=True)
def test_each_job_of_a_batch_streams_previews_of_its_own_images(claimed):
    runner.run_batch(claimed)
    widths = [preview_width(Job.objects.get(pk=job.pk).outputs.first().trajectory[-1]["image"])
              for job in claimed]
    assert widths == [8, 8, 8]
    two = Job.objects.get(pk=claimed[1].pk)
    assert [(o.index, o.recipe["batch_index"], o.image_seed) for o in two.outputs.all()] == [
        (0, 1, 70), (1, 2, 71)]


@pytest.mark.django_db(transaction=True)
def test_a_failed_batch_fails_every_job_with_the_reason(claimed, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the device fell over")

    monkeypatch.setattr(engine, "generate_batch", broken)
    assert runner.run_batch(claimed) == "failed, failed, failed"
    for job in claimed:
        job.refresh_from_db()
        assert job.status == Job.Status.FAILED and "the device fell over" in job.error


def test_a_batch_preview_is_cut_per_job(make_recipe, tiny_pipeline):
    steps = []
    engine.generate_batch([make_recipe(seed=1), make_recipe(seed=9, batch_size=2)],
                          pipeline=tiny_pipeline, on_step=lambda *args: steps.append(args))
    preview = steps[-1][2]
    assert preview.batch_size == 3
    part = engine.preview_part(preview, 1, 2)
    assert part.batch_size == 2 and part.render(0) == preview.render(1)


# --- End to end: a real worker, then reproduce and verify ------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_worker_batches_users_jobs_and_each_image_reproduces_identically(
    people, tiny, client, settings, tmp_path
):
    def submit(person, seed):
        params = {"prompt": f"circle {person.username}", "model": tiny, "steps": 6,
                  "seed": seed, "width": SIZE, "height": SIZE}
        return services.job_submit(user=person, recipe=recipes.recipe_from_params(params))

    worker = Worker(env={"STUDIO_BATCH_MAX": "4", "MEDIA_ROOT": str(tmp_path)})
    settings.MEDIA_ROOT = tmp_path
    with transaction.atomic():  # all queued before the first message is sent
        jobs = [submit(person, 30 + i) for i, person in enumerate(people[:3])]
    worker.start()
    try:
        jobs = [job_finished(job) for job in jobs]
        assert [job.status for job in jobs] == [Job.Status.SUCCEEDED] * 3, jobs[0].error
        assert len({job.started_at for job in jobs}) == 1  # one claim
        image = Image.objects.get(output__job=jobs[2])
        assert image.output.recipe["batch_size"] == 3
        client.force_login(people[2])
        client.post(reverse("image_reproduce", args=[image.pk]))
        reproduction = Reproduction.objects.get(image=image)
        assert job_finished(reproduction.job).status == Job.Status.SUCCEEDED
        reproduction.refresh_from_db()
        assert reproduction.verdict == "identical"
    finally:
        worker.stop()


def test_the_benchmark_runs_a_few_jobs():
    done = subprocess.run(
        [sys.executable, "tests/benchmarks/batching.py", "--jobs", "4", "--users", "4",
         "--rounds", "1", "--affinity-jobs", "8"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(figures["images_per_second"]) == {"4"}
    assert figures["model_loads"]["off"] >= figures["model_loads"]["on"] >= 1


"""Model affinity (STUDIO_AFFINITY_MAX_DEFER, docs/architecture.md §3.3): a worker takes a
job for the model it holds before the head of the fair order, and passes a user's turn at
most that many claims."""

from dataclasses import replace

import pytest

from generation import claims, engine, runner, selectors
from generation.batching import Head, plan_claim
from generation.models import Job

HELD = "/models/held"


def head(pk, owner, model, deferred=0) -> Head:
    return Head(pk=pk, owner_id=owner, model=model, key=None, images=1, seed=0,
                deferred=deferred)


def holds(source: str) -> bool:
    return source == HELD


def test_the_first_head_for_a_held_model_leads_and_the_heads_before_it_are_passed():
    heads = [head(1, 1, "other"), head(2, 2, "other"), head(3, 3, HELD), head(4, 4, HELD)]
    plan = plan_claim(heads, holds=holds, batch_max=1, max_defer=2)
    assert [h.pk for h in plan.members] == [3] and [h.pk for h in plan.passed] == [1, 2]


def test_a_head_passed_as_often_as_the_setting_allows_is_not_passed_again():
    heads = [head(1, 1, "other"), head(2, 2, "other", deferred=2), head(3, 3, HELD)]
    plan = plan_claim(heads, holds=holds, batch_max=1, max_defer=2)
    assert [h.pk for h in plan.members] == [1] and plan.passed == []


def test_affinity_off_or_no_model_held_takes_the_head():
    heads = [head(1, 1, "other"), head(2, 2, HELD)]
    assert plan_claim(heads, holds=holds, batch_max=1, max_defer=0).members[0].pk == 1
    assert plan_claim(heads, holds=lambda _: False, batch_max=1, max_defer=3).members[0].pk == 1


def test_a_batch_joining_an_affine_leader_never_passes_a_head_at_its_bound():
    keyed = [replace(head(1, 1, "other"), key="b"), replace(head(2, 2, HELD), key="a"),
             replace(head(3, 3, "other", deferred=1), key="b"), replace(head(4, 4, HELD), key="a")]
    plan = plan_claim(keyed, holds=holds, batch_max=4, max_defer=1)
    assert [h.pk for h in plan.members] == [2] and [h.pk for h in plan.passed] == [1]


# --- On the real database -------------------------------------------------------------------


@pytest.fixture
def people(django_user_model):
    return [django_user_model.objects.create_user(f"user{i}", f"u{i}@example.com", "pw")
            for i in range(4)]


@pytest.fixture
def models(make_recipe):
    """Recipes of two models: the one the worker holds, and another."""
    recipe = make_recipe()

    def of(source: str, **fields) -> engine.Recipe:
        return replace(make_recipe(**fields), model=replace(recipe.model, source=source))

    return of


def queue(owner, recipe: engine.Recipe) -> Job:
    return Job.objects.create(owner=owner, recipe=recipe.to_json(), total_steps=recipe.steps)


def claim_times(count: int) -> list[Job]:
    """`count` claims by a worker that holds HELD, each job finishing before the next."""
    started = []
    for _ in range(count):
        jobs = claims.jobs_claim(worker="w", holds=holds)
        started += jobs
        Job.objects.filter(pk__in=[job.pk for job in jobs]).update(status=Job.Status.SUCCEEDED)
    return started


@pytest.mark.django_db
def test_a_users_turn_is_deferred_at_most_the_setting(settings, people, models):
    settings.STUDIO_AFFINITY_MAX_DEFER = 2
    waiting = queue(people[0], models("/models/other"))
    for person in people[1:]:
        for _ in range(3):
            queue(person, models(HELD))
    started = claim_times(4)
    assert [job.recipe["model"]["source"] for job in started[:2]] == [HELD, HELD]
    assert started[2].pk == waiting.pk  # passed twice, then it leads
    waiting.refresh_from_db()
    assert waiting.deferred == 2


@pytest.mark.django_db
def test_affinity_off_claims_in_fair_order(settings, people, models):
    settings.STUDIO_BATCH_MAX = 2  # claims by plan, but affinity off
    first = queue(people[0], models("/models/other"))
    queue(people[1], models(HELD))
    assert claims.jobs_claim(worker="w", holds=holds)[0].pk == first.pk
    first.refresh_from_db()
    assert first.deferred == 0


@pytest.mark.django_db
def test_a_pass_another_worker_counted_meanwhile_is_seen(settings, people, models, monkeypatch):
    """Two workers may plan from the same read; the pass is counted under a lock, so the
    second one to count sees the first one's and plans again."""
    settings.STUDIO_AFFINITY_MAX_DEFER = 1
    waiting = queue(people[0], models("/models/other"))
    queue(people[1], models(HELD))
    stale = selectors.round_heads(limit=10)  # read before the other worker passed it
    Job.objects.filter(pk=waiting.pk).update(deferred=1)
    reads = iter([stale])
    monkeypatch.setattr(claims, "round_heads",
                        lambda **kw: next(reads, None) or selectors.round_heads(**kw))
    assert claims.jobs_claim(worker="w", holds=holds)[0].pk == waiting.pk
    waiting.refresh_from_db()
    assert waiting.deferred == 1


def test_a_worker_holds_the_models_it_has_loaded(tiny_pipeline, tiny_model):
    assert runner.holds(tiny_model)
    assert not runner.holds(tiny_model + "-elsewhere")

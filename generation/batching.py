"""Which of the current round's jobs a worker claims (docs/architecture.md §3.3): a plan made
from the heads of the users' queues, in fair order. Plain Python on rows already read, so
the rules are tested without a database; claims.jobs_claim reads the heads and claims.

Two settings, both off by default:
- STUDIO_AFFINITY_MAX_DEFER (`max_defer`): the worker's first job may be a later head whose
  model it holds loaded, passing the heads before it; a head passed `max_defer` times is
  never passed again, so a user's turn waits at most that many claims for affinity.
- STUDIO_BATCH_MAX (`batch_max`): that job may take other heads of the round along, each
  with the same batch key, up to `batch_max` images in all: one job per user, never a
  user's second job.
"""

from collections.abc import Callable
from dataclasses import dataclass

from . import engine


@dataclass(frozen=True)
class Head:
    """A user's oldest queued job, as the claim weighs it."""

    pk: object
    owner_id: int
    model: str  # the recipe's model source: what a worker holds loaded
    key: str | None  # engine.batch_key; None: it always runs alone
    images: int
    seed: int
    deferred: int = 0  # Job.deferred

    @classmethod
    def from_row(cls, pk, owner_id, recipe: dict, reveals, deferred: int) -> "Head":
        """A head from its job's fields. A reproduction (`reveals`) re-runs its original's
        batch shape exactly, so it runs alone; so does a recipe that cannot be read."""
        try:
            parsed = engine.Recipe.from_json(recipe)
        except engine.RecipeError:
            return cls(pk, owner_id, "", None, 1, 0, deferred)
        key = engine.batch_key(parsed) if reveals is None else None
        return cls(pk, owner_id, parsed.model.source, key, parsed.batch_size, parsed.seed,
                   deferred)


@dataclass(frozen=True)
class Plan:
    members: list[Head]  # what to claim, in batch order; the first leads
    passed: list[Head]  # heads before the last member that are not claimed now


def plan_claim(heads: list[Head], *, holds: Callable[[str], bool] | None, batch_max: int,
               max_defer: int) -> Plan:
    """What to claim from `heads` (fair order, one per user; not empty).

    1. The leader: the first head, unless affinity is on and a head whose model this worker
       holds comes before any head already passed `max_defer` times (which cannot be passed
       again): then that one.
    2. With batching on, the heads after the leader with its batch key join it, in order,
       while the images fit in `batch_max`; each job's seed must be at least its place in
       the batch (merged_recipe records seed - place). With affinity on, a head passed
       `max_defer` times that does not join ends the search.
    """
    at = _leader(heads, holds, max_defer)
    chosen = [at, *_companions(heads, at, batch_max, max_defer)]
    passed = [head for i, head in enumerate(heads[: chosen[-1]]) if i not in chosen]
    return Plan(members=[heads[i] for i in chosen], passed=passed)


def _leader(heads: list[Head], holds, max_defer: int) -> int:
    if max_defer <= 0 or holds is None:
        return 0
    for i, head in enumerate(heads):
        if holds(head.model):
            return i
        if head.deferred >= max_defer:
            break
    return 0


def _companions(heads: list[Head], at: int, batch_max: int, max_defer: int) -> list[int]:
    leader = heads[at]
    images = leader.images
    if batch_max <= 1 or leader.key is None:
        return []
    joined = []
    for i in range(at + 1, len(heads)):
        if images >= batch_max:
            break
        head = heads[i]
        if head.key == leader.key and images + head.images <= batch_max and head.seed >= images:
            joined.append(i)
            images += head.images
        elif 0 < max_defer <= head.deferred:
            break
    return joined

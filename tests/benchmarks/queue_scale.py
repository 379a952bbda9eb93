"""How the fair queue's queries grow with the queue and the job history, in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python tests/benchmarks/queue_scale.py [--runs 21]

On its own database (`studio_bench`, recreated) it fills the jobs table for each case (20
users; some jobs finished long ago, some queued) and times, medians of `runs`:
  - claim: the worker's claim statement, rolled back so the queue stays as it is;
  - start_order: the order the queued jobs will start in, which every queue position and
    every queue announcement reads.
Every job waits for one claim, and every submit, start and cancel sends one announcement, so
both should stay in milliseconds however long the history grows. The last line is the JSON
object of each case's medians in milliseconds.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_overhead import setup_django  # noqa: E402

CASES = [(50, 0), (50, 50_000), (2_000, 50_000)]  # (queued, finished)


def median_ms(call, runs: int) -> float:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return round(statistics.median(seconds) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    setup_django()
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from generation import selectors, services
    from generation.models import Job

    users = [get_user_model().objects.create_user(f"queue-{i}") for i in range(20)]
    recipe = {"prompt": "a red circle", "steps": 4, "seed": 1}

    class Rollback(Exception):
        pass

    def claim():
        try:
            with transaction.atomic():
                assert services.job_claim_next(worker="bench") is not None
                raise Rollback
        except Rollback:
            pass

    results = {}
    for queued, finished in CASES:
        Job.objects.all().delete()
        now = timezone.now()
        Job.objects.bulk_create(
            [Job(owner=users[i % 20], recipe=recipe, total_steps=4, started_at=now,
                 status=Job.Status.SUCCEEDED) for i in range(finished)], batch_size=5000)
        Job.objects.bulk_create(
            [Job(owner=users[i % 20], recipe=recipe, total_steps=4) for i in range(queued)])
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE generation_job")  # as autovacuum would have
        case = f"{queued} queued, {finished} finished"
        results[case] = {"claim": median_ms(claim, args.runs),
                         "start_order": median_ms(selectors.start_order, args.runs)}
        print(f"{case:32s} claim {results[case]['claim']:8.2f} ms   "
              f"start_order {results[case]['start_order']:8.2f} ms")
    print(json.dumps(results))


if __name__ == "__main__":
    main()

"""What a worker's per-step work costs the sampling loop, measured side by side in one process.

    HF_HUB_OFFLINE=1 .venv/bin/python tests/benchmarks/step_costs.py [--runs 11] [--threads N]

The serving benchmark shows that sampling runs slower inside a worker than in a bare engine
call; this one takes that apart. On its own database (`studio_bench`, recreated) it runs the
serving recipe (the default model, 64x64, 20 steps, batch 1) for one running job, alternating:
  - bare: the engine call with no callback (what serving_overhead.py compares against);
  - previews: a preview made every step and handed to a no-op callback;
  - publish: previews, and each step's websocket message published and kept
    (runner.StepReporter without its heartbeat);
  - heartbeat: previews, and each step's heartbeat write (generation.heartbeat);
  - heartbeat_orm: the same, but the heartbeat's UPDATE built by the ORM, as it was before
    services.job_progress was written out by hand (kept here as the comparison);
  - worker: runner.StepReporter whole, as a worker runs it.
No web server or client runs meanwhile, so what differs is the callback's own work and the
threads it wakes. The last line is the JSON object of each variant's median time / bare.
"""

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_overhead import PROMPT, setup_django  # noqa: E402


class NoHeartbeat:
    keep_running = True

    def beat(self, step: int) -> None:
        pass

    def stop(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: Studio's own choice)")
    args = parser.parse_args()
    setup_django()
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from generation import engine, recipes, registry, runner, services
    from generation.heartbeat import Heartbeat
    from generation.models import Job

    params = {"prompt": PROMPT, "steps": 20, "width": 64, "height": 64, "seed": 1,
              "batch_size": 1}
    recipe_json = recipes.recipe_from_params(params)
    recipe = replace(engine.Recipe.from_json(recipe_json),
                     threads=args.threads or registry.threads())
    device, dtype = registry.device()
    pipeline = engine.load_pipeline(recipe.model.source, device=device, dtype=dtype)
    user = get_user_model().objects.create_user("bench-steps")
    job = Job.objects.create(owner=user, recipe=recipe_json, total_steps=20, attempt=1,
                             status=Job.Status.RUNNING, started_at=timezone.now(),
                             heartbeat=timezone.now())

    def run(on_step=None, should_cancel=None):
        return engine.generate(recipe, pipeline=pipeline, on_step=on_step,
                               should_cancel=should_cancel)

    def with_reporter(heartbeat: bool):
        reporter = runner.StepReporter(job)
        if not heartbeat:
            reporter.heartbeat.stop()
            reporter.heartbeat = NoHeartbeat()
        try:
            return run(reporter.on_step, reporter.should_cancel)
        finally:
            reporter.heartbeat.stop()

    def heartbeat_only():
        heartbeat = Heartbeat(job)
        try:
            return run(lambda step, *rest: heartbeat.beat(step))
        finally:
            heartbeat.stop()

    def orm_progress(*, job, step):
        running = Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempt=job.attempt)
        changed = running.filter(cancel_requested=False).update(
            step=step, heartbeat=timezone.now()
        )
        return changed == 1

    def heartbeat_orm():
        hand_written, services.job_progress = services.job_progress, orm_progress
        try:
            return heartbeat_only()
        finally:
            services.job_progress = hand_written

    variants = {
        "bare": run,
        "previews": lambda: run(lambda *step: None),
        "publish": lambda: with_reporter(heartbeat=False),
        "heartbeat": heartbeat_only,
        "heartbeat_orm": heartbeat_orm,
        "worker": lambda: with_reporter(heartbeat=True),
    }
    for variant in variants.values():  # warm-up
        variant()
    seconds = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, variant in variants.items():
            started = time.perf_counter()
            variant()
            seconds[name].append(time.perf_counter() - started)
    bare = statistics.median(seconds["bare"])
    ratios = {}
    for name, times in seconds.items():
        ratios[name] = round(statistics.median(times) / bare, 3)
        print(f"{name:14s} {statistics.median(times) * 1000:6.1f} ms  x{ratios[name]:.3f}")
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()

"""What a worker's per-step work costs the sampling loop, measured side by side in one process.

    HF_HUB_OFFLINE=1 .venv/bin/python tests/benchmarks/step_costs.py [--runs 11] [--threads N]
        [--size 64]

The serving benchmark shows how much slower sampling runs inside a worker than in a bare
engine call; this one takes that apart. On its own database (`studio_bench`, recreated) it
runs the serving recipe (the default model, 64x64, 20 steps, batch 1) for one running job,
alternating:
  - bare: the engine call with no callback (what serving_overhead.py compares against);
  - copies: each step's preview arrays copied and handed to a no-op callback;
  - in_process: each step drawn, published and its heartbeat written between the steps, in
    this process (what the sidecar spares a worker);
  - worker: each step sent to the sidecar process from the sampling thread, as a worker's
    runner does it; the sidecar draws, publishes and writes the heartbeat.
No web server or client runs meanwhile, so what differs is the callback's own work and the
threads and processes it wakes. The last line is the JSON object of each variant's median
time / bare.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: Studio's own choice)")
    parser.add_argument("--size", type=int, default=64, help="width and height (default 64)")
    args = parser.parse_args()
    setup_django()
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from generation import broadcast, engine, recipes, registry, services, sidecar
    from generation.models import Job

    params = {"prompt": PROMPT, "steps": 20, "width": args.size, "height": args.size,
              "seed": 1, "batch_size": 1}
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

    def in_process(step, total, preview, elapsed):
        broadcast.send(job.group_name, {
            "type": "job.progress", "job": str(job.pk), "attempt": job.attempt, "step": step,
            "total": total, "elapsed": elapsed, "preview": sidecar.preview_url(preview),
        }, keep=True)
        services.job_progress(job=job, step=step)

    def worker():
        steps = sidecar.get().begin(job)
        try:
            return run(steps.step, steps.should_stop)
        finally:
            steps.end()

    variants = {
        "bare": run,
        "copies": lambda: run(lambda *step: None),
        "in_process": lambda: run(in_process),
        "worker": worker,
    }
    for variant in variants.values():  # warm-up
        variant()
    seconds = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, variant in variants.items():
            started = time.perf_counter()
            variant()
            seconds[name].append(time.perf_counter() - started)
    sidecar.get().close()
    bare = statistics.median(seconds["bare"])
    ratios = {}
    for name, times in seconds.items():
        ratios[name] = round(statistics.median(times) / bare, 3)
        print(f"{name:14s} {statistics.median(times) * 1000:6.1f} ms  x{ratios[name]:.3f}")
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()

"""Batching and model affinity, measured on real workers (docs/performance.md, "Batching and
model affinity").

    HF_HUB_OFFLINE=1 .venv/bin/python tests/benchmarks/batching.py [--jobs 48] [--rounds 2]
        [--users 1,4,8] [--batch-max 8] [--affinity-jobs 100] [--max-defer 4]
        [--steps 20] [--size 64]

Self-contained: a database of its own (`studio_bench_batching`, recreated each run), a broker
queue of its own, real Celery worker processes (production settings, one torch thread each,
the default model preloaded), the demo model.

1. Throughput. For each number of concurrent users, with batching off
   (STUDIO_BATCH_MAX=1) and on (`--batch-max`): one worker; every user keeps one job
   queued or running (a new one as soon as theirs finishes, each with a prompt and seed of
   its own), until `--jobs` jobs have finished. Images per second from the first submit to
   the last finish, and the mean number of jobs a run held; off and on alternate (off, on,
   on, off, ...) for `--rounds` runs of each, and each figure is their mean.
2. Model affinity. Two workers, two models (the demo model and a copy of it under another
   name), each worker's model memory room for one of them (so taking the other model's job
   means a load), `--affinity-jobs` jobs queued at once by 10 users, each job's model drawn
   at random (seeded). Model loads (jobs that waited for a load) with affinity off and on
   (STUDIO_AFFINITY_MAX_DEFER=`--max-defer`), the most times a job was passed, and the
   seconds to finish them all.

Prints a table, and as its last line the JSON object {"images_per_second": {users: {"off",
"on", "ratio"}}, "model_loads": {"off", "on"}, "max_deferred", "affinity_seconds"}.
"""

import argparse
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DB_NAME = "studio_bench_batching"
WEIGHTS = ROOT / "generation" / "demo_model" / "weights"


def setup_django(models: str) -> None:
    os.environ.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
        DEBUG="0", SECRET_KEY=secrets.token_urlsafe(50), SECURE_SSL_REDIRECT="0",
        SESSION_COOKIE_SECURE="0", CSRF_COOKIE_SECURE="0", SECURE_HSTS_SECONDS="0",
        STUDIO_QUEUE=f"bench-batching-{os.getpid()}", STUDIO_MODELS=models,
        # Users here submit far faster than the per-user limits allow a person.
        STUDIO_MAX_SUBMITS_PER_MINUTE="1000000", STUDIO_MAX_QUEUED_PER_USER="1000",
        STUDIO_THREADS="1", DJANGO_SETTINGS_MODULE="studio.settings",
    )
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    import psycopg

    with psycopg.connect(dbname="postgres", user="postgres", host="127.0.0.1",
                         autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


class Worker:
    """A real Celery worker process on this benchmark's queue, with settings of its own."""

    def __init__(self, name: str, env: dict[str, str]):
        self.name = f"{name}-{os.getpid()}@{socket.gethostname()}"
        self.log = ROOT / ".run" / f"bench-batching-{name}.log"
        self.log.parent.mkdir(exist_ok=True)
        from django.conf import settings

        cmd = [sys.executable, "-m", "celery", "-A", "studio", "worker", "--loglevel=WARNING",
               "--concurrency=1", "--prefetch-multiplier=1", f"--queues={settings.STUDIO_QUEUE}",
               "--without-gossip", "--without-mingle", f"--hostname={self.name}"]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=out,
                                         stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> None:
        from studio.celery import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text()[-2000:]}")
            if app.control.ping(destination=[self.name], timeout=0.5):
                return
        raise RuntimeError(f"worker not ready: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def people(count: int, prefix: str) -> list:
    from django.contrib.auth import get_user_model

    users = get_user_model().objects
    return [users.create_user(f"{prefix}{i}", f"{prefix}{i}@example.com", secrets.token_hex())
            for i in range(count)]


def submit(user, model: str, n: int, args):
    from generation import recipes, services

    params = {"prompt": f"a red circle on a blue background {n}", "model": model,
              "steps": args.steps, "seed": 1000 + n, "width": args.size, "height": args.size}
    return services.job_submit(user=user, recipe=recipes.recipe_from_params(params))


def wait_all(jobs: list, timeout: float = 900) -> list:
    from generation.models import Job

    deadline = time.monotonic() + timeout
    pks = [job.pk for job in jobs]
    while time.monotonic() < deadline:
        done = list(Job.objects.filter(pk__in=pks, status__in=Job.FINISHED))
        if len(done) == len(pks):
            failed = [job.error for job in done if job.status != Job.Status.SUCCEEDED]
            if failed:
                raise RuntimeError(f"{len(failed)} jobs did not succeed: {failed[0]}")
            return done
        time.sleep(0.02)
    raise RuntimeError(f"jobs still unfinished after {timeout} s")


def closed_loop(users: list, jobs: int, args) -> tuple[float, float]:
    """Every user keeps one job in the system until `jobs` have finished: (images per
    second, mean jobs per run)."""
    from generation.models import Job

    model = "studio-demo"
    started = time.perf_counter()
    waiting = {user.pk: submit(user, model, n, args) for n, user in enumerate(users)}
    sent, finished, by_user = len(users), [], {user.pk: user for user in users}
    while waiting:
        done = Job.objects.filter(pk__in=[job.pk for job in waiting.values()],
                                  status__in=Job.FINISHED)
        for job in done:
            if job.status != Job.Status.SUCCEEDED:
                raise RuntimeError(f"a job did not succeed: {job.error}")
            finished.append(job)
            del waiting[job.owner_id]
            if sent < jobs:
                waiting[job.owner_id] = submit(by_user[job.owner_id], model, sent, args)
                sent += 1
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    batched = [job.timings.get("batched_jobs", 1) for job in finished]
    return len(finished) / elapsed, sum(batched) / len(batched)


def throughput(args) -> dict:
    """Batching off and on in the order off, on, on, off, ... (`--rounds` of each), so the
    machine's drifting speed falls on both alike; the mean of each."""
    results = {}
    for count in args.users:
        rates: dict[str, list] = {"off": [], "on": []}
        runs: dict[str, list] = {"off": [], "on": []}
        order = [("off", "on"), ("on", "off")]
        for n in range(args.rounds):
            for mode in order[n % 2]:
                batch_max = 1 if mode == "off" else args.batch_max
                worker = Worker(f"batch-{mode}", {"STUDIO_BATCH_MAX": str(batch_max)})
                try:
                    worker.wait_ready()
                    users = people(count, f"u{count}{mode}{n}-")
                    closed_loop(users[:1], 1, args)  # warm-up: the first run's one-off costs
                    rate, per_run = closed_loop(users, args.jobs, args)
                finally:
                    worker.stop()
                rates[mode].append(rate)
                runs[mode].append(per_run)
                print(f"{count:>5} users  batching {mode:<3}  {rate:6.2f} images/s  "
                      f"{per_run:4.2f} jobs a run", flush=True)
        mean = {mode: sum(values) / len(values) for mode, values in rates.items()}
        results[str(count)] = {
            "off": round(mean["off"], 3), "on": round(mean["on"], 3),
            "ratio": round(mean["on"] / mean["off"], 3),
            "on_jobs_per_run": round(sum(runs["on"]) / len(runs["on"]), 2),
        }
    return results


def affinity(args) -> dict:
    from generation.models import Job

    room = str(int(sum(f.stat().st_size for f in WEIGHTS.rglob("*.safetensors")) * 1.5))
    draw = random.Random(7)
    figures = {}
    for mode, defer in (("off", 0), ("on", args.max_defer)):
        env = {"STUDIO_AFFINITY_MAX_DEFER": str(defer), "STUDIO_WORKER_MODEL_MEMORY": room}
        workers = [Worker(f"affinity-{mode}-{i}", env) for i in range(2)]
        try:
            for worker in workers:
                worker.wait_ready()
            users = people(10, f"a{mode}")
            started = time.perf_counter()
            jobs = [submit(users[n % 10], draw.choice(["studio-demo", "demo-b"]), n, args)
                    for n in range(args.affinity_jobs)]
            done = wait_all(jobs)
            seconds = time.perf_counter() - started
        finally:
            for worker in workers:
                worker.stop()
        loads = sum(1 for job in done if job.timings.get("model_load", 0) > 0)
        most = max(Job.objects.filter(pk__in=[job.pk for job in done])
                   .values_list("deferred", flat=True))
        figures[mode] = {"loads": loads, "max_deferred": most, "seconds": round(seconds, 1)}
        print(f"affinity {mode:<3} (max defer {defer})  {loads:3d} model loads per "
              f"{len(done)} jobs  most passes {most}  {seconds:6.1f} s", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--users", default="1,4,8")
    parser.add_argument("--batch-max", type=int, default=8)
    parser.add_argument("--affinity-jobs", type=int, default=100)
    parser.add_argument("--max-defer", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    args.users = [int(n) for n in args.users.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as folder:
        copy = Path(shutil.copytree(WEIGHTS, Path(folder) / "demo-b"))
        os.environ["MEDIA_ROOT"] = str(Path(folder) / "media")  # the workers' PNGs
        setup_django(f"demo-b={copy}")
        print(f"demo model, {args.size}x{args.size}, {args.steps} steps, one torch thread "
              f"per worker, {os.cpu_count()} cores", flush=True)
        rates = throughput(args)
        loads = affinity(args)
    print(json.dumps({
        "images_per_second": rates,
        "model_loads": {mode: loads[mode]["loads"] for mode in loads},
        "max_deferred": loads["on"]["max_deferred"],
        "affinity_seconds": {mode: loads[mode]["seconds"] for mode in loads},
        "affinity_jobs": args.affinity_jobs,
    }))


if __name__ == "__main__":
    main()

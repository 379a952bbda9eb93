"""What serving costs on top of the engine, measured side by side in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python tests/benchmarks/serving_overhead.py [--runs 7]
        [--size 64] [--steps 20] [--threads N]

It starts what it needs on a database of its own (`studio_bench`, recreated each run): the
web server (uvicorn), one Celery worker, a user with an API token. Then, for each of `runs`
paired runs of the same recipe (the default model, 64x64, 20 steps, batch 1, unless the
size and steps are given):
  - the bare engine call in this process, the same cached-pipeline call a worker makes;
  - a job submitted over HTTP, watched over its websocket until its final state, which
    comes after the image is stored: submit -> stored image through web + Redis + worker.
It also takes the time from the job's start (the worker's claim) to the first preview the
websocket client receives, and prints the time a job spends outside the engine (the served
time less the worker's own engine call) and how much slower sampling ran inside the worker
than in its paired bare call. The last line is the JSON object
{"overhead_ratio": ..., "first_preview_ms": ..., "step_ms": ..., "web_rss_mb": ...} (medians;
the web server's resident memory once it has served every run and the generate page).
"""

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DB_NAME = "studio_bench"
PROMPT = "a red circle on a blue background"


def setup_django() -> None:
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
    # Production settings, as docker/compose.yaml runs them, not the development defaults:
    # DEBUG formats and keeps every query it runs. The TLS settings are off because this
    # talks plain HTTP on loopback, where in production a proxy terminates TLS.
    os.environ.update(
        DEBUG="0", SECRET_KEY=secrets.token_urlsafe(50), SECURE_SSL_REDIRECT="0",
        SESSION_COOKIE_SECURE="0", CSRF_COOKIE_SECURE="0", SECURE_HSTS_SECONDS="0",
    )
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["DJANGO_SETTINGS_MODULE"] = "studio.settings"
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=os.environ.copy(), stdout=out,
                                stderr=subprocess.STDOUT)


def start_services() -> tuple[subprocess.Popen, subprocess.Popen, int]:
    """The web server (uvicorn) and one Celery worker on this database; their logs go to
    .run/bench-*.log. Returns both processes and the web server's port."""
    port = free_port()
    logs = ROOT / ".run"
    logs.mkdir(exist_ok=True)
    web = start([sys.executable, "-m", "uvicorn", "studio.asgi:application", "--port", str(port),
                 "--ws", "websockets-sansio", "--log-level", "warning"], logs / "bench-web.log")
    worker = start([sys.executable, "-m", "celery", "-A", "studio", "worker", "--concurrency=1",
                    "--queues=generation", "--loglevel=WARNING", "-n", "bench@%h"],
                   logs / "bench-worker.log")
    return web, worker, port


def stop_services(*processes: subprocess.Popen) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait()


def wait_http(url: str, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)  # noqa: S310 (loopback only)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


class Session:
    """A logged-in browser-like HTTP session: the generate page's own submit path."""

    def __init__(self, base: str, username: str, password: str):
        import requests

        self.base, self.http = base, requests.Session()
        self.http.get(f"{base}/accounts/login/")
        self.http.post(f"{base}/accounts/login/", data={
            "username": username, "password": password,
            "csrfmiddlewaretoken": self.http.cookies["csrftoken"],
        }, headers={"Referer": f"{base}/accounts/login/"})

    def submit(self, params: dict) -> dict:
        response = self.http.post(f"{self.base}/jobs/", data=params, headers={
            "X-CSRFToken": self.http.cookies["csrftoken"], "Referer": f"{self.base}/generate/",
        })
        response.raise_for_status()
        return response.json()["job"]


async def watch(ws_base: str, job_id: str, token: str) -> tuple[float, float | None]:
    """Seconds until the final state, and the wall-clock time the first preview arrived."""
    from websockets.asyncio.client import connect

    first_preview = None
    async with connect(f"{ws_base}/ws/jobs/{job_id}/",
                       additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "progress" and first_preview is None:
                first_preview = time.time()
            if message["type"] == "state" and message["job"]["status"] in (
                "succeeded", "failed", "canceled"
            ):
                assert message["job"]["status"] == "succeeded", message
                return time.perf_counter(), first_preview


def served_run(
    session: Session, ws_base: str, token: str, params: dict
) -> tuple[float, float, dict]:
    """Submit-to-stored seconds, milliseconds from the job's start to the first preview, and
    where the time went (milliseconds, from the job's own timestamps and this client's)."""
    from generation.models import Job

    started, submitted_at = time.perf_counter(), time.time()
    job = session.submit(params)
    answered_at = time.time()
    finished, first_preview = asyncio.run(watch(ws_base, job["id"], token))
    received_at = time.time() - (time.perf_counter() - finished)
    job = Job.objects.get(pk=job["id"])
    claimed = job.started_at.timestamp()
    stored = job.finished_at.timestamp()
    parts = {
        "submit": answered_at - submitted_at,
        "queue": claimed - job.queued_at.timestamp(),
        "engine": job.timings["total"],
        "run": stored - claimed,
        "announce": received_at - stored,
    }
    return finished - started, (first_preview - claimed) * 1000, {
        k: v * 1000 for k, v in parts.items()
    }


def resident_mb(process: subprocess.Popen) -> float:
    """The process's resident memory now (VmRSS), in MB; Linux only."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc")


def bare_run(recipe_json: dict, threads: int | None):
    from dataclasses import replace

    from generation import engine, registry

    recipe = engine.Recipe.from_json(recipe_json)
    recipe = replace(recipe, threads=threads or registry.threads())
    device, dtype = registry.device()
    pipeline = engine.load_pipeline(recipe.model.source, device=device, dtype=dtype)
    started = time.perf_counter()
    result = engine.generate(recipe, pipeline=pipeline)
    return time.perf_counter() - started, result.timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("STUDIO_THREADS", 0)),
                        help="torch threads for the worker and the bare call alike "
                        "(default: Studio's own choice, generation.registry.threads)")
    # The recipe is the default; a larger one shows how the fixed costs weigh
    # against a longer engine call.
    parser.add_argument("--size", type=int, default=64, help="width and height (default 64)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    args = parser.parse_args()
    if args.threads:
        os.environ["STUDIO_THREADS"] = str(args.threads)
    setup_django()
    from django.contrib.auth import get_user_model

    from generation import recipes
    from studio.services import token_create

    user = get_user_model().objects.create_user("bench", password="bench-password-123")
    token = token_create(user=user, name="bench")[1]
    web, worker, port = start_services()
    try:
        base, ws_base = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
        wait_http(f"{base}/healthz")
        session = Session(base, "bench", "bench-password-123")
        params = {"prompt": PROMPT, "steps": args.steps, "width": args.size,
                  "height": args.size, "seed": 1, "batch_size": 1}
        recipe_json = recipes.recipe_from_params(params)
        served_run(session, ws_base, token, params)  # warm-up: loads the worker's pipeline
        bare_run(recipe_json, args.threads)  # warm-up: loads this process's pipeline
        bare, served, first, steps, outside, inside = [], [], [], [], [], []
        for run in range(args.runs):
            seconds, timings = bare_run(recipe_json, args.threads)
            bare.append(seconds)
            steps.append(statistics.median(timings["steps"]) * 1000)
            total, first_ms, parts = served_run(session, ws_base, token, params)
            served.append(total)
            outside.append(total * 1000 - parts["engine"])
            inside.append(parts["engine"] / (seconds * 1000))
            first.append(first_ms)
            print(f"run {run + 1}: engine {seconds * 1000:.0f} ms, served {total * 1000:.0f} ms, "
                  f"first preview {first_ms:.0f} ms after start; served: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
        session.http.get(f"{base}/generate/").raise_for_status()
        web_rss = resident_mb(web)
    finally:
        stop_services(web, worker)
    ratio = statistics.median(served) / statistics.median(bare)
    print(f"median engine call {statistics.median(bare) * 1000:.0f} ms, "
          f"median submit-to-stored {statistics.median(served) * 1000:.0f} ms, ratio {ratio:.3f}")
    # The ratio moves with this machine's speed from one minute to the next (the bare call
    # alone spans 0.3-0.5 s within a morning); the time a job spends outside the engine moves less.
    print(f"median time outside the engine (submit-to-stored less the worker's engine call): "
          f"{statistics.median(outside):.1f} ms")
    # Sampling inside the worker shares the machine with the job's per-step work (previews
    # drawn, published and relayed; the heartbeat): what that costs, paired run by run.
    print(f"median engine call inside the worker / its paired bare call: "
          f"{statistics.median(inside):.3f}")
    print(f"web server resident memory: {web_rss:.0f} MB")
    print(json.dumps({
        "overhead_ratio": round(ratio, 3),
        "first_preview_ms": round(statistics.median(first), 1),
        "step_ms": round(statistics.median(steps), 1),
        "web_rss_mb": round(web_rss),
    }))


if __name__ == "__main__":
    main()

"""What the web server spends relaying a job's steps to its watchers.

    HF_HUB_OFFLINE=1 .venv/bin/python tests/benchmarks/relay_cost.py [--runs 4] [--watchers 3]

Every step of a running job reaches each of its websocket watchers through the web server
(Redis pub/sub -> channel layer -> JobConsumer -> websocket frame), on the same machine as
the worker on a small install. This starts the web server and one worker as
serving_overhead.py does, runs a 200-step 64x64 job per run with `watchers` clients on its
socket, and reads the web server's CPU time (user + system, from /proc) across each job.
The first run is a warm-up. The last line is {"web_cpu_ms_per_message": ...} (median).
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import serving_overhead as bench  # noqa: E402 (the same server, worker and login)

STEPS = 200


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def count_steps(ws_base: str, job_id: str, token: str) -> int:
    from websockets.asyncio.client import connect

    steps = 0
    async with connect(f"{ws_base}/ws/jobs/{job_id}/",
                       additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        while True:
            message = json.loads(await ws.recv())
            steps += message["type"] == "progress"
            if message["type"] == "state" and message["job"]["status"] in (
                "succeeded", "failed", "canceled"
            ):
                assert message["job"]["status"] == "succeeded", message
                return steps


async def watch_all(ws_base: str, job_id: str, token: str, watchers: int) -> int:
    counts = await asyncio.gather(
        *[count_steps(ws_base, job_id, token) for _ in range(watchers)]
    )
    return sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--watchers", type=int, default=3)
    args = parser.parse_args()
    bench.setup_django()
    from django.contrib.auth import get_user_model

    from studio.services import token_create

    user = get_user_model().objects.create_user("bench", password="bench-password-123")
    token = token_create(user=user, name="bench")[1]
    web, worker, port = bench.start_services()
    try:
        base, ws_base = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
        bench.wait_http(f"{base}/healthz")
        session = bench.Session(base, "bench", "bench-password-123")
        params = {"prompt": bench.PROMPT, "steps": STEPS, "width": 64, "height": 64,
                  "seed": 1, "batch_size": 1}
        per_message = []
        for run in range(args.runs + 1):
            job = session.submit(params)
            before, started = cpu_seconds(web.pid), time.perf_counter()
            relayed = asyncio.run(watch_all(ws_base, job["id"], token, args.watchers))
            spent = (cpu_seconds(web.pid) - before) * 1000
            label = "warm-up" if run == 0 else f"run {run}"
            print(f"{label}: {relayed} messages relayed in {time.perf_counter() - started:.1f} s, "
                  f"web CPU {spent:.0f} ms, {spent / relayed:.3f} ms a message")
            if run:
                per_message.append(spent / relayed)
    finally:
        bench.stop_services(web, worker)
    print(json.dumps({"web_cpu_ms_per_message": round(statistics.median(per_message), 3)}))


if __name__ == "__main__":
    main()

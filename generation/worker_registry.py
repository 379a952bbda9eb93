"""Which workers are up, which models each can load and which it holds loaded. The workers
publish it themselves in Redis; submit (services.job_submit), the claim (tasks.run_job), a
waiting job's state (presenters), the staff page and the metrics read it.

What a worker publishes, one entry per Celery node (`gpu0@host`), and who writes it:

- its job-running pool process, as it starts, after each job and every PUBLISH_SECONDS
  (from a thread, so a long job does not silence it): the models it can load (its own
  registry's: the settings', its models folder's and the admin's, each whose files are on
  this host or a hub id it may download), those it holds loaded, its device;
- its main process, the only one that knows: whether it is draining, taking nothing from the
  job queue (`celery -A studio control cancel_consumer generation -d gpu0@host`, or a
  shutdown under way). A draining worker finishes its job and takes no other.

Two hashes per deployment's queue (STUDIO_QUEUE), so test runs and deployments that share a
Redis never meet: `studio:workers:<queue>` (node: entry JSON) and `…:draining` (node: when
marked). Redis 7.0 keeps no expiry per field, so an entry carries when it was written
(`seen`) and counts for STALE_SECONDS: the hosts' clocks must agree within seconds, as the
jobs' heartbeats already need (docs/architecture.md §3.4). A worker stopped cleanly deletes
its fields; a killed one's go stale, and publishers delete them after FORGET_SECONDS.
"""

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from django.conf import settings
from django.db import connections
from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download

from . import registry
from .broker import broker_client

log = logging.getLogger(__name__)

PUBLISH_SECONDS = 10
# Four reports missed: a worker this quiet is gone (killed, or its host is).
STALE_SECONDS = 45
FORGET_SECONDS = 600
DRAIN_CHECK_SECONDS = 2
# A page of jobs, or the API's list of them, reads the registry once, not once a job.
RECENT_SECONDS = 2
SHOWN_WORKERS = 5


def keys() -> tuple[str, str]:
    """The registry's two hashes: the entries, and the draining marks."""
    base = f"studio:workers:{settings.STUDIO_QUEUE}"
    return base, f"{base}:draining"


# --- Reading ------------------------------------------------------------------------------


def live_workers() -> list[dict]:
    """The workers up now, by name. One Redis round trip; raises RedisError when Redis does
    not answer. Each is a dict of this shape, which the metrics (generation/metrics_view.py)
    and the staff page rely on:

        {"name": "gpu0@host",        # Celery's node name, as Job.worker records it
         "host": "host",             # its node name's host part
         "models": ["sdxl", ...],    # the model names it can load, sorted
         "holds": ["sdxl"],          # those it holds loaded now, sorted
         "device": "cuda",           # where it generates
         "draining": False,          # it takes no new job (it may finish one)
         "seen": 1718000000.0,       # when it last reported (Unix time)
         "pid": 1234,                # its job-running process
         "filesystem": "2049:2"}     # which files it sees (shares_this_disk)
    """
    base, draining_key = keys()
    pipe = broker_client().pipeline(transaction=False)
    pipe.hgetall(base)
    pipe.hgetall(draining_key)
    entries, draining = pipe.execute()
    now = time.time()
    workers = [_entry(raw, now, draining) for raw in entries.values()]
    return sorted((worker for worker in workers if worker), key=lambda worker: worker["name"])


def _entry(raw: str, now: float, draining: dict) -> dict | None:
    try:
        entry = json.loads(raw)
        name, seen = str(entry["name"]), float(entry["seen"])
    except (ValueError, KeyError, TypeError):
        return None
    if now - seen > STALE_SECONDS:
        return None
    return {"name": name, "host": name.partition("@")[2] or name,
            "models": sorted(map(str, entry.get("models", ()))),
            "holds": sorted(map(str, entry.get("holds", ()))),
            "device": str(entry.get("device", "")), "draining": name in draining,
            "seen": seen, "pid": entry.get("pid"), "filesystem": str(entry.get("filesystem", ""))}


def taking_jobs(workers: list[dict]) -> list[dict]:
    """Those of `workers` not draining."""
    return [worker for worker in workers if not worker["draining"]]


def models_available(workers: list[dict] | None = None) -> set[str] | None:
    """The models some worker taking jobs can load; None when no worker takes jobs (none is
    up, or every one is draining). Raises RedisError as live_workers does."""
    taking = taking_jobs(live_workers() if workers is None else workers)
    return set().union(*(worker["models"] for worker in taking)) if taking else None


def filesystem() -> str:
    """Which files this process sees: its root's device and inode. A container has a root
    of its own, so two processes with the same host name may still see different files."""
    root = os.stat("/")
    return f"{root.st_dev}:{root.st_ino}"


def shares_this_disk(worker: dict) -> bool:
    """Whether the worker sees this process's files: on this host (by its node name) and
    with the same root. The runner loads a recipe's source, so such a worker can run any
    model whose files this web process found, whether or not its registry names it."""
    return worker["host"] == socket.gethostname() and worker["filesystem"] == filesystem()


def has_model(worker: dict, model: str) -> bool:
    """Whether the worker can load the model called `model` (as this process names it), by
    its registry or by sharing this process's files; draining or not."""
    return model in worker["models"] or shares_this_disk(worker)


def refusal(model: str) -> str | None:
    """Why a job for `model` cannot be queued now, or None when it can: refused when workers
    are up and none of them can load it. With none up (all restarting, say), or only
    draining ones that have it (they may come back), the job waits, and its state says why
    (waiting_reason). One Redis round trip; if Redis does not answer, no refusal here."""
    try:
        workers = live_workers()
    except redis.RedisError as exc:
        log.warning("cannot read the worker registry: %s", exc)
        return None
    if not workers or any(has_model(worker, model) for worker in workers):
        return None
    # The workers' node names are internal host names: the operator's log has them, the
    # user's message only how many there are.
    log.info("refused a job for %r: no worker up has it (workers up: %s)", model,
             _names(workers))
    count = f"{len(workers)} worker{'s' if len(workers) != 1 else ''} up"
    return (f"No worker that is up can load the model “{model}” ({count}). Choose another "
            "model, or ask an operator to add it to a worker's models.")


def _names(workers: list[dict]) -> str:
    names = [worker["name"] for worker in workers[:SHOWN_WORKERS]]
    more = len(workers) - len(names)
    return ", ".join(names) + (f" and {more} more" if more else "")


def waiting_reason(model: str, workers: list[dict] | None = None) -> str | None:
    """What a queued job for `model` waits for beyond its turn, for its page: "no worker is
    up", "every worker that has the model “X” is draining", "no worker that is up has the
    model “X”"; None when a worker taking jobs can run it (or Redis does not answer).
    `workers`: live_workers(), else read here at most once per RECENT_SECONDS."""
    if workers is None:
        workers = _recent()
        if workers is None:
            return None
    if not workers:
        return "no worker is up"
    having = [worker for worker in workers if has_model(worker, model)]
    if not having:
        return f"no worker that is up has the model “{model}”"
    if not taking_jobs(having):
        return f"every worker that has the model “{model}” is draining"
    return None


_recent_read: tuple[float, list[dict] | None] = (-RECENT_SECONDS, None)


def _forget_recent() -> None:
    """A write here makes this process read again: it knows the registry changed."""
    global _recent_read
    _recent_read = (-RECENT_SECONDS, None)


def _recent() -> list[dict] | None:
    global _recent_read
    at, workers = _recent_read
    if time.monotonic() - at >= RECENT_SECONDS:
        try:
            workers = live_workers()
        except redis.RedisError as exc:
            log.warning("cannot read the worker registry: %s", exc)
            workers = None
        _recent_read = (time.monotonic(), workers)
    return workers


# --- This worker: publishing --------------------------------------------------------------


def loadable(source: str) -> bool:
    """Whether this host can load a model from `source`: its files are here, or it is a hub
    id in the local cache, or one it may download (HF_HUB_OFFLINE off). Stat calls only."""
    path = Path(source)
    if path.exists():
        return True
    if path.is_absolute() or source.startswith("."):
        return False
    if not hub_constants.HF_HUB_OFFLINE:
        return True
    try:
        snapshot_download(source, local_files_only=True)
    except (OSError, ValueError):
        return False
    return True


@dataclass
class _ThisWorker:
    node: str
    holds: Callable[[str], bool]
    device: str
    models: dict[str, str] = field(default_factory=dict)  # name: source, as last published


_this: _ThisWorker | None = None


def start(node: str, *, holds: Callable[[str], bool]) -> None:
    """In a worker's job-running process as it starts (generation/tasks.py): publish what it
    can load, then again every PUBLISH_SECONDS from a daemon thread. `holds(source)`:
    whether it has that model loaded (runner.holds)."""
    global _this
    try:
        device = str(registry.device()[0])
    except Exception as exc:  # noqa: BLE001 (its jobs fail with the reason; it is still up)
        device = f"none: {exc}"
    _this = _ThisWorker(node=node, holds=holds, device=device)
    publish(refresh_models=True)
    threading.Thread(target=_keep_publishing, name="worker-registry", daemon=True).start()


def _keep_publishing() -> None:
    while True:
        time.sleep(PUBLISH_SECONDS)
        publish(refresh_models=True)


def publish(*, refresh_models: bool = False) -> None:
    """Write this worker's entry now: after a job (what it holds changed) with the models as
    last read, or reading them again (`refresh_models`, a database query: the admin's). Best
    effort: a failure is logged, and the next report tries again."""
    this = _this
    if this is None:
        return
    try:
        if refresh_models:
            this.models = {name: source for name, source in registry.models().items()
                           if loadable(source)}
        report(this.node, models=this.models, device=this.device,
               holds=[name for name, source in this.models.items() if this.holds(source)])
    except Exception as exc:  # noqa: BLE001 (the registry must never stop a worker)
        log.warning("could not publish this worker in the registry: %s", exc)
    finally:
        if refresh_models:
            # Its connection goes back: the reporting thread's (a thread of our own must,
            # studio/settings.py says), or the starting process's (as runner.preload's).
            connections.close_all()


def report(node: str, *, models, holds, device: str, seen: float | None = None,
           root: str | None = None) -> None:
    """Write a worker's entry (`publish` writes this process's): the names of the models it
    can load and of those it holds, its device; `seen` (now) and `root` (filesystem()) as
    a worker elsewhere would. Deletes the entries gone for FORGET_SECONDS meanwhile."""
    entry = {"name": node, "models": sorted(models), "holds": sorted(holds), "device": device,
             "pid": os.getpid(), "filesystem": filesystem() if root is None else root,
             "seen": time.time() if seen is None else seen}
    base, _ = keys()
    pipe = broker_client().pipeline(transaction=False)
    pipe.hset(base, node, json.dumps(entry))
    pipe.expire(base, FORGET_SECONDS)
    pipe.hgetall(base)
    *_, entries = pipe.execute()
    _forget_recent()
    _forget_stale(entries)


def _forget_stale(entries: dict[str, str]) -> None:
    now = time.time()
    gone = []
    for name, raw in entries.items():
        try:
            if now - float(json.loads(raw)["seen"]) > FORGET_SECONDS:
                gone.append(name)
        except (ValueError, KeyError, TypeError):
            gone.append(name)
    if gone:
        base, draining = keys()
        pipe = broker_client().pipeline(transaction=False)
        pipe.hdel(base, *gone)
        pipe.hdel(draining, *gone)
        pipe.execute()


def this_worker() -> tuple[str, frozenset[str]] | None:
    """This process's node name and the models it last published (claims.claim_filter);
    None in a process that publishes nothing (a test's, an eager run, the web)."""
    this = _this
    return None if this is None else (this.node, frozenset(this.models))


def withdraw(node: str) -> None:
    """Delete the worker's entry and mark, as it stops cleanly."""
    base, draining = keys()
    try:
        pipe = broker_client().pipeline(transaction=False)
        pipe.hdel(base, node)
        pipe.hdel(draining, node)
        pipe.execute()
        _forget_recent()
    except redis.RedisError as exc:
        log.warning("could not withdraw %s from the worker registry: %s", node, exc)


# --- This worker's main process: draining -------------------------------------------------

_shutting_down = False


def mark_draining(node: str, draining: bool) -> None:
    """Mark the worker draining (it takes no new job), or not. Raises RedisError."""
    _, draining_key = keys()
    pipe = broker_client().pipeline(transaction=False)
    if draining:
        pipe.hset(draining_key, node, str(time.time()))
        pipe.expire(draining_key, FORGET_SECONDS)
    else:
        pipe.hdel(draining_key, node)
    pipe.execute()
    _forget_recent()


def shutting_down() -> None:
    """Celery's warm shutdown began (called from its signal handler: only a flag here)."""
    global _shutting_down
    _shutting_down = True


def watch_draining(consumer) -> None:
    """In a worker's main process once it consumes: mark it draining while the job queue is
    not among those it consumes, or it is shutting down, checked every DRAIN_CHECK_SECONDS
    on Celery's own timer (no thread of ours in the process that forks the pool)."""
    node, queues = consumer.hostname, consumer.app.amqp.queues
    was: bool | None = None  # unknown: a mark left from this node's last life is cleared

    def check() -> None:
        nonlocal was
        draining = _shutting_down or settings.STUDIO_QUEUE not in queues.consume_from
        try:
            # Written each time while draining: a Redis restarted meanwhile forgot it.
            if draining or was is not False:
                mark_draining(node, draining)
        except redis.RedisError as exc:
            log.warning("could not mark %s draining: %s", node, exc)
            return
        if was is not None and draining != was:
            log.info("%s %s", node, "is draining: it takes no new job" if draining
                     else "takes jobs again")
        was = draining

    check()
    consumer.timer.call_repeatedly(DRAIN_CHECK_SECONDS, check)

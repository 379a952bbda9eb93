"""The forward process's shared state (generation/learn_tasks.py): what the web process and
the workers both read and write, in the broker's Redis (generation/broker.py:
the Django cache's keys are the web's own, and a test run's carry a prefix its worker does
not know). Keys carry the deployment's queue, as the worker registry's do, so deployments
and test runs that share a Redis never meet.

Per computation, its **state**: none while it waits (in the queue, or for its worker to load
the model); ``running`` from its claim (SET NX: the first of the worker and a replacing
request wins), with how many frames are decoded and when its worker last said so; then
``done``, ``failed`` or ``superseded``. A ``running`` state whose last report is older than
RUNNING_SECONDS reads as failed: its worker died (the state itself is kept KEEP_SECONDS, so
it never lapses back to "waiting").

Per user, the computation they **want** and whether a **message** of theirs waits in the
queue. A request makes its computation the wanted one and sends a message only when none of
the user's waits; a worker that takes a message computes whatever is wanted then. So a user
has at most one message in the queue however often they ask, and their latest wish is the
one computed. The order of the two writes makes this safe: a request writes the wish and then
marks a message sent (SET NX); a worker clears the mark and then reads the wish. A wish
written after the worker's read found the mark cleared, and sent a message of its own.
"""

import json
import time

from django.conf import settings

from .broker import broker_client

# How long a computation is found again, and its frames and state kept.
KEEP_SECONDS = 3600
# A running computation reports after each frame; without word for this long, its worker is
# presumed dead: the computation reads as failed, and its user may start it again.
RUNNING_SECONDS = 300
WAITING, RUNNING, DONE, FAILED, SUPERSEDED = "queued", "running", "done", "failed", "superseded"
STOPPED = "The worker computing this stopped responding; show it again to retry."


def _key(*parts) -> str:
    return ":".join(["studio:learn", settings.STUDIO_QUEUE, "forward", *map(str, parts)])


# --- One computation ----------------------------------------------------------------------


def state(computation: str) -> dict | None:
    """The computation's state, None while it waits; a ``running`` one whose worker fell
    silent reads as failed (STOPPED)."""
    raw = broker_client().get(_key(computation))
    found = json.loads(raw) if raw else None
    if found and found["status"] == RUNNING and time.time() - found["at"] > RUNNING_SECONDS:
        return {"status": FAILED, "error": STOPPED}
    return found


def running(computation: str | None) -> bool:
    """Whether a worker computes it now (and has not fallen silent)."""
    found = state(computation) if computation else None
    return found is not None and found["status"] == RUNNING


def progress(done: int, total: int) -> dict:
    """A running state: `done` of `total` frames decoded, said now."""
    return {"status": RUNNING, "done": done, "total": total, "at": time.time()}


def claim(computation: str, new: dict) -> bool:
    """Set the state if it has none yet: the first of the worker and a replacing request
    wins. Kept KEEP_SECONDS, so a claimed computation never reads as waiting again."""
    return bool(broker_client().set(_key(computation), json.dumps(new), nx=True, ex=KEEP_SECONDS))


def put(computation: str, new: dict) -> None:
    broker_client().set(_key(computation), json.dumps(new), ex=KEEP_SECONDS)


def supersede(computation: str | None) -> bool:
    """Mark it superseded if no worker claimed it yet (its message will do nothing for it);
    True if it was, or there was none."""
    return computation is None or claim(computation, {"status": SUPERSEDED})


# --- One user's wish and message -----------------------------------------------------------


def wanted(user_id: int) -> dict | None:
    """The computation the user asked for last (``want``'s `wish`), whatever its state."""
    raw = broker_client().get(_key("user", user_id, "wanted"))
    return json.loads(raw) if raw else None


def want(user_id: int, wish: dict) -> bool:
    """Make `wish` (its ``computation`` id, and what a worker needs to compute it) the
    user's wanted computation; True when a message must be sent for it, none of theirs
    waiting in the queue. A wish this one replaced that another request wrote meanwhile
    is superseded here, so it does not wait forever."""
    pipe = broker_client().pipeline(transaction=True)  # in order: the wish, then the mark
    pipe.set(_key("user", user_id, "wanted"), json.dumps(wish), ex=KEEP_SECONDS, get=True)
    pipe.set(_key("user", user_id, "sent"), wish["computation"], nx=True, ex=KEEP_SECONDS)
    replaced, sent = pipe.execute()
    if replaced and (old := json.loads(replaced)["computation"]) != wish["computation"]:
        supersede(old)
    return bool(sent)


def take(user_id: int) -> dict | None:
    """A worker took the user's message: none of theirs waits in the queue any more. The
    wish to compute now (None when there is none)."""
    pipe = broker_client().pipeline(transaction=True)  # in order: the mark, then the wish
    pipe.delete(_key("user", user_id, "sent"))
    pipe.get(_key("user", user_id, "wanted"))
    _, raw = pipe.execute()
    return json.loads(raw) if raw else None


def send_again(user_id: int, computation: str) -> bool:
    """Mark a message of the user's sent again (a worker passing theirs on); False when a
    request sent one meanwhile, which serves the same wish."""
    return bool(broker_client().set(_key("user", user_id, "sent"), computation, nx=True,
                             ex=KEEP_SECONDS))

"""The synchronous endpoints (OpenAI's and AUTOMATIC1111's) answer only once the images exist.
They submit an ordinary job (in a thread: reading and validating the request is CPU work) and
wait for it here, from an async view: while the job queues and runs, the request is a
coroutine parked on the event loop, not a thread blocked in a sleep.

How a wait works:
1. Join the job's channel-layer group (the one its websocket watchers join, docs/architecture.md §5)
   before reading its state, so the final message cannot fall between the read and the wait.
2. Read the job; while it is not finished, wait until the worker's final `job.state` message
   arrives or POLL_SECONDS pass, then read it again. Messages are best effort (pub/sub drops
   them while Redis restarts); the database is the source of truth, and the poll bounds how
   late a lost message can make an answer.
"""

import asyncio
import contextlib
import logging

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection

from . import pubsub_layer
from .models import Job, Output

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0
# A started job ends within Celery's hard time limit; this also covers a long queue. A client
# still waiting after half an hour is better told where its job is.
WAIT_SECONDS = 30 * 60


class WaitTimeout(Exception):
    def __init__(self, job: Job):
        super().__init__(f"job {job.pk} is still {job.status}")
        self.job = job


async def wait_for_job(job: Job, *, timeout: float = WAIT_SECONDS) -> Job:
    """The job, read again once it is finished (succeeded, failed or canceled).

    Raises WaitTimeout after `timeout` seconds. If the caller goes away, the job is left to
    finish: its images land in the gallery like any other job's.
    """
    finished = asyncio.Event()
    async with _listening(job.group_name, finished):
        try:
            async with asyncio.timeout(timeout):
                while True:
                    finished.clear()  # before the read: a message after it must wake us
                    await _reread(job)
                    if job.is_finished:
                        return job
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(finished.wait(), POLL_SECONDS)
        except TimeoutError:
            raise WaitTimeout(job) from None


@sync_to_async
def _reread(job: Job) -> None:
    """Read the job again and hand the connection back at once: a wait can last half an hour,
    and keeping the connection between reads would take it from the pool (at most
    DATABASE_POOL_MAX_SIZE) for all that time."""
    try:
        job.refresh_from_db()
    finally:
        connection.close()


@contextlib.asynccontextmanager
async def _listening(group: str, finished: asyncio.Event):
    """Sets `finished` whenever the group announces a job state, while the block runs."""
    layer = get_channel_layer()
    channel = await _join(layer, group)
    if channel is None:
        yield
        return
    listener = asyncio.create_task(_listen(layer, channel, finished))
    try:
        yield
    finally:
        # Canceling the receive makes channels_redis unsubscribe the channel. Leaving is best
        # effort too: the answer is ready, and a dead subscription is dropped with its channel.
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await listener
        with contextlib.suppress(Exception):
            await layer.group_discard(group, channel)


async def _join(layer, group: str) -> str | None:
    try:
        channel = await layer.new_channel()
        await pubsub_layer.group_add(layer, group, channel)
    except Exception as exc:  # Redis away: polling alone still gets there
        log.warning("waiting for %s by polling only: %s", group, exc)
        return None
    return channel


async def _listen(layer, channel: str, finished: asyncio.Event) -> None:
    while True:
        message = await layer.receive(channel)
        if message.get("type") == "job.state":
            finished.set()


class NoImages(Exception):
    """The job ended without images, or still runs when the wait ends: an HTTP status for
    the compatible endpoints, and a message for the person."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def wait_for_outputs(job: Job, *, timeout: float = WAIT_SECONDS) -> list[Output]:
    """The outputs of the job once it succeeds, in batch order; NoImages otherwise."""
    try:
        job = await wait_for_job(job, timeout=timeout)
    except WaitTimeout as exc:
        raise NoImages(504, f"Job {job.pk} is still {exc.job.status} after {timeout:g} s; "
                       "its images will be in your gallery.") from exc
    if job.status == Job.Status.FAILED:
        raise NoImages(500, job.error or "The job failed.")
    if job.status == Job.Status.CANCELED:
        raise NoImages(409, f"Job {job.pk} was canceled.")
    return await sync_to_async(list)(job.outputs.order_by("index"))


@sync_to_async
def read_pngs(outputs: list[Output]) -> list[bytes]:
    """The outputs' PNG files, their recipe metadata included (docs/architecture.md §4)."""
    pngs = []
    for output in outputs:
        with output.image.open("rb") as file:
            pngs.append(file.read())
    return pngs

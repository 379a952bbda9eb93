"""`/ws/jobs/<uuid>/`: the live view of one job (docs/architecture.md §5). An adapter: it admits,
relays and forwards a cancel to the service; job rules live in generation.services."""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import pubsub_layer, selectors, services
from .presenters import job_state


class JobConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        self.job = await database_sync_to_async(selectors.get_job_for_user)(
            user=user, job_id=self.scope["url_route"]["kwargs"]["job_id"]
        )
        if self.job is None:
            # Not found and not allowed look the same: nobody learns which jobs exist.
            await self.close(code=4404)
            return
        # Join before reading the state, so no message falls between the two.
        await pubsub_layer.group_add(self.channel_layer, self.job.group_name, self.channel_name)
        await self.accept()
        for message in await database_sync_to_async(self.catch_up)():
            await self.send_json(message)

    def catch_up(self) -> list[dict]:
        """The current state, and while the job runs, its latest step with its preview: a
        client that connects mid-run draws the picture now, not a step later. Before its
        first step, the state says whether it waits for its model to load."""
        state = self.current_state()
        latest = selectors.job_latest_step(self.job)
        if latest is None:
            return [state]
        if latest["type"] == "job.state":  # runner.announce_loading's
            for key in ("loading_model", "loading_seconds"):
                state["job"][key] = latest["job"].get(key)
            return [state]
        return [state, progress_message(latest)]

    def current_state(self) -> dict:
        self.job.refresh_from_db()
        return {"type": "state", "job": job_state(selectors.job_view(self.job))}

    async def disconnect(self, code):
        if getattr(self, "job", None) is not None:
            await self.channel_layer.group_discard(self.job.group_name, self.channel_name)

    async def receive_json(self, content, **kwargs):
        if content.get("type") != "cancel":
            await self.send_json({"type": "error", "error": "Unknown message type."})
            return
        cancel = database_sync_to_async(services.job_cancel)
        try:
            await cancel(job=self.job, actor=self.scope["user"])
        except services.NotJobOwner as exc:
            await self.send_json({"type": "error", "error": str(exc)})
            return
        await self.send_json(await database_sync_to_async(self.current_state)())

    # Group messages from the worker, relayed as they are.
    async def dispatch(self, message):
        """Relay the worker's messages straight away. Channels' own `dispatch` closes the
        thread's expired database connections before every handler, a round trip to a worker
        thread that these handlers, which never touch the database, do not need: it came with
        every step of every watched job. The handlers that do use the database go through
        `database_sync_to_async`, which closes them itself.

        Channels documents no hook for this, so the override assumes its `dispatch` does
        nothing else a relay needs; pyproject.toml pins channels, and
        tests/generation/test_library_internals.py fails if an upgrade changes that."""
        relay = {"job.progress": self.job_progress, "job.state": self.job_state,
                 "job.queue": self.job_queue}
        handler = relay.get(message["type"])
        if handler is None:
            await super().dispatch(message)
        else:
            await handler(message)

    async def job_progress(self, event):
        await self.send_json(progress_message(event))

    async def job_state(self, event):
        await self.send_json({"type": "state", "job": event["job"]})

    async def job_queue(self, event):
        await self.send_json({"type": "queue", "job": event["job"],
                              "queue_position": event["queue_position"]})


def progress_message(event: dict) -> dict:
    return {k: v for k, v in event.items() if k != "type"} | {"type": "progress"}

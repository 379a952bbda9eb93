"""The JSON shape of a job, as the websocket, the generate page and the API show it
(docs/architecture.md §5). Presents what it is given and reads nothing of the database: the
caller reads the job's view (selectors.job_view), so whoever shows many jobs decides how to
read them. A queued job's `waiting` comes from the worker registry, read at most once every
few seconds per process (worker_registry.waiting_reason)."""

from . import worker_registry
from .inputs import input_urls
from .models import Job, Output
from .selectors import JobView


def job_state(view: JobView) -> dict:
    job = view.job
    state = {
        "id": str(job.pk),
        "status": job.status,
        "step": job.step,
        "total": job.total_steps,
        "attempt": job.attempt,
        "queue_position": view.queue_position,
        "waiting": waiting(job),
        "prompt": job.recipe.get("prompt", ""),
        "seed": job.recipe.get("seed"),
        "queued_at": job.queued_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "error": job.error,
        "images": [],
    }
    if job.status == Job.Status.SUCCEEDED:
        state["images"] = [output_state(output) for output in view.outputs]
        state["timings"] = job.timings
    return state


def waiting(job: Job) -> str | None:
    """What a queued job waits for beyond its turn ("no worker is up", "no worker that is up
    has the model “X”"); None for any other job, or one a worker can run."""
    if job.status != Job.Status.QUEUED:
        return None
    return worker_registry.waiting_reason((job.recipe.get("model") or {}).get("name", ""))


def output_state(output: Output) -> dict:
    return {
        "id": str(output.pk),
        "index": output.index,
        "url": output.get_image_url(),
        "page_url": output.get_page_url(),
        "seed": output.image_seed,
        "width": output.width,
        "height": output.height,
        # The input image and mask it was made from (None for text to image): the job's
        # state goes to its owner and staff alone.
        **input_urls(output),
    }

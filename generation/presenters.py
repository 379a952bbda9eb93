"""The JSON shape of a job, as the websocket, the generate page and the API show it."""

from .models import Job
from .services import queue_position


def job_state(job: Job, outputs=None) -> dict:
    """`outputs`: a succeeded job's outputs when the caller has them (they are read otherwise)."""
    recipe = job.recipe
    state = {
        "id": str(job.pk),
        "status": job.status,
        "step": job.step,
        "total": job.total_steps,
        "attempt": job.attempt,
        "queue_position": queue_position(job),
        "prompt": recipe.get("prompt", ""),
        "seed": recipe.get("seed"),
        "queued_at": job.queued_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "error": job.error,
        "images": [],
    }
    if job.status == Job.Status.SUCCEEDED:
        outputs = job.outputs.all() if outputs is None else outputs
        state["images"] = [output_state(output) for output in outputs]
        state["timings"] = job.timings
    return state


def output_state(output) -> dict:
    return {
        "id": str(output.pk),
        "index": output.index,
        "url": output.get_image_url(),
        "page_url": output.get_page_url(),
        "seed": output.recipe.get("seed", 0) + output.recipe.get("batch_index", 0),
        "width": output.width,
        "height": output.height,
    }

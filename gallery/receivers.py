from .reproduce import verify_after_job
from .services import images_create_for_job


def add_job_outputs(sender, *, job, outputs, **kwargs):
    images_create_for_job(job=job, outputs=outputs)
    verify_after_job(job=job)

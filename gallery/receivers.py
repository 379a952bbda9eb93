from .services import images_create_for_job


def add_job_outputs(sender, *, job, outputs, **kwargs):
    images_create_for_job(job=job, outputs=outputs)

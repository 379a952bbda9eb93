"""The Celery app. Its settings live in studio/settings.py under CELERY_* (docs/architecture.md
§1)."""

import os

from celery import Celery, signals
from django.db import close_old_connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings")
# A GPU worker's main process imports the engine and then forks the process that runs jobs.
# Importing diffusers asks `torch.accelerator.is_available()`, which on a CUDA machine starts
# the CUDA driver and so "poisons" fork: the forked process then fails its first job with
# "Cannot re-initialize CUDA in forked subprocess" (seen on an H100). Asked through NVML, as
# this makes torch do, the question leaves CUDA alone; the job process starts CUDA itself.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

app = Celery("studio")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_prerun.connect
@signals.task_postrun.connect
def hand_back_connections(sender=None, **kwargs) -> None:
    """What Django does around a request: a task's connections go back to the pool, and one
    that broke (a Postgres restart) is dropped. The workers keep their pool between tasks
    (CELERY_DB_REUSE_MAX in settings) rather than let Celery close it around each one. An
    eager task runs inside its caller's work, maybe a transaction: not its to close."""
    if getattr(getattr(sender, "request", None), "is_eager", False):
        return
    close_old_connections()

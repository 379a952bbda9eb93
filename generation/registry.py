"""The models this Studio knows: the bundled demo model, those named in STUDIO_MODELS and
those added in the admin (ModelSource).

The engine knows sources, not names; this is the one place that maps a name to a source.
"""

import os

from django.conf import settings

from . import engine
from .models import ModelSource


def configured() -> dict[str, str]:
    """{name: source} of the models the settings name: the demo model first, then
    STUDIO_MODELS (the demo model's name cannot be taken). Reads no database."""
    return {settings.STUDIO_DEMO_MODEL_NAME: str(settings.STUDIO_DEMO_MODEL_PATH),
            **{name: source for name, source in settings.STUDIO_MODELS.items()
               if name != settings.STUDIO_DEMO_MODEL_NAME}}


def models() -> dict[str, str]:
    """{name: source} for every known model: those the settings name, then those enabled in
    the admin. On a name clash the earlier one wins: settings are the operator's, and nobody
    can shadow the demo model from a web form."""
    known = configured()
    for name, source in ModelSource.objects.filter(enabled=True).values_list("name", "source"):
        known.setdefault(name, source)
    return known


def default_name() -> str:
    return getattr(settings, "STUDIO_DEFAULT_MODEL", None) or next(iter(models()))


def default_source() -> str:
    """The default model's source. The settings name the default model (studio/settings.py
    refuses one they don't), so this reads no database: a worker process asks before it may
    use it (generation.runner.preload)."""
    return configured()[default_name()]


def get(name: str) -> engine.ModelRef | None:
    """The model called ``name``, with the hash of its weights; None if no model has it.

    Raises ModelLoadError when the model is known but its files cannot be read.
    """
    source = models().get(name)
    if source is None:
        return None
    return engine.ModelRef(name=name, source=source, hash=engine.weights_hash(source))


def device() -> tuple:
    """(device, dtype) this process generates on, from STUDIO_DEVICE."""
    return engine.resolve_device(getattr(settings, "STUDIO_DEVICE", "auto"))


def threads() -> int | None:
    """torch's intra-op threads for a run: STUDIO_THREADS, else on the CPU every core but one.

    The spare core is for the web server, Postgres and Redis. Measured on the 2-core build
    machines, the demo model's 20 steps took 0.33 s on one thread and 0.87 s on torch's
    default of two, which fought those processes for the cores. None on CUDA: the GPU works.
    """
    if getattr(settings, "STUDIO_THREADS", 0):
        return settings.STUDIO_THREADS
    if device()[0].type != "cpu":
        return None
    return max(1, (os.cpu_count() or 1) - 1)

"""The /learn/ page: diffusion's ideas shown on the model the user picks (docs/architecture.md
§9). Thin: the schedule maths is generation/learn.py, the charts generation/learn_charts.py;
the grids' pictures are ordinary jobs, submitted by learn.js through POST /jobs/ as the
generate page submits, and the forward process is a task a worker runs
(generation/learn_tasks.py), so no heavy work runs here."""

import json
import secrets

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from . import engine, learn, learn_charts, learn_tasks, recipes, registry
from .job_request import Refused
from .models import Output

# How many of the user's images the denoising-path picker offers, newest first.
RECENT_IMAGES = 12
# Frames of the denoising path shown side by side, evenly spaced over what is stored.
PATH_STRIP = 6
DEMO_EVAL = settings.BASE_DIR / "docs" / "demo_model_eval.json"


@login_required
def learn_page(request):
    models = list(registry.models())
    model = request.GET.get("model")
    if model not in models:
        model = registry.default_name()
    images = recent_images(request.user)
    schedule = schedule_context(model)
    chosen = next((o for o in images if str(o.pk) == request.GET.get("image")),
                  images[0] if images else None)
    context = {
        "models": models,
        "model": model,
        "schedule": schedule,
        "forward": forward_context(request.user, schedule),
        "seed": secrets.randbelow(engine.SEED_MAX + 1),
        "steps": engine.DEFAULT_STEPS,
        "guidance": engine.DEFAULT_GUIDANCE,
        "guidance_cells": [_cell(f"guidance {g:g}", guidance_scale=g)
                           for g in learn.GRID_GUIDANCE],
        "sampler_rows": [(s, [_cell(f"{s} · {n} steps", sampler=s, steps=n)
                              for n in learn.GRID_STEPS]) for s in learn.GRID_SAMPLERS],
        "grid_steps": learn.GRID_STEPS,
        "demo": learn.demo_tables(DEMO_EVAL),
        "demo_name": settings.STUDIO_DEMO_MODEL_NAME,
        "max_queued": settings.STUDIO_MAX_QUEUED_PER_USER,
        "images": images,
        "chosen": chosen,
        "path": denoising_path(chosen) if chosen else None,
    }
    return render(request, "generation/learn.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def forward(request):
    """The forward-process panel's computation: POST starts it (or finds it, or stores an
    upload as its picture), GET reads how it stands; both answer its state as JSON, 404
    when there is none. A refusal names its field (429 while another of the user's runs,
    or past the starts a minute allows: counted before the request's fields are read)."""
    posted = request.method == "POST"
    try:
        if posted:
            learn_tasks.forward_allowed(request.user)
        asked = learn_tasks.forward_request(
            user=request.user, data=request.POST if posted else request.GET,
            upload=request.FILES.get("image") if posted else None, starting=posted)
        state = (learn_tasks.forward_start if posted else learn_tasks.forward_state)(asked)
    except Refused as exc:
        return JsonResponse({"errors": exc.errors}, status=exc.status(400), headers=exc.headers)
    return JsonResponse(state, status=404 if state["status"] == "none" else 200)


def forward_context(user, schedule: dict | None) -> dict:
    """The panel's picker: the user's newest images, newest first (so chosen), then the
    demo model's kind of picture; the strip's timesteps, labelled before the frames come."""
    images = (Output.objects.filter(job__owner=user).defer("trajectory")
              .order_by("-created")[:RECENT_IMAGES])
    steps = schedule["steps"] if schedule else 1000
    frames, strip = learn.forward_timesteps(steps)
    return {"images": list(images), "strip": [frames[k] for k in strip], "steps": steps,
            "seed_max": engine.SEED_MAX}


def _cell(label: str, **params) -> dict:
    """One picture of a grid: what its job sets beside the panel's own fields."""
    return {"label": label, "params": json.dumps(params)}


def schedule_context(model: str) -> dict | None:
    """The charts for the model's own schedule; None when its configs cannot be read or
    name a schedule diffusers does not know (the page says so)."""
    spec = recipes.model_spec(model)
    if spec is None:
        return None
    try:
        schedules = learn.schedules_for(model, spec.scheduler_config)
    except (ValueError, TypeError):
        return None
    config = spec.scheduler_config
    return {
        "charts": [learn_charts.alpha_bar_chart(schedules), learn_charts.snr_chart(schedules)],
        "steps": schedules[0].steps,
        "beta_schedule": "trained betas" if config.get("trained_betas") is not None
        else config.get("beta_schedule", "linear"),
        "zero_snr": bool(config.get("rescale_betas_zero_snr")),
        "prediction_type": config.get("prediction_type", "epsilon"),
        "last_alpha_bar": learn_charts.fmt(float(schedules[0].alpha_bar[-1])),
    }


def recent_images(user) -> list[Output]:
    """The user's newest images that kept denoising frames. A deleted image takes its output
    row with it (gallery.services.image_delete), so every one listed still exists."""
    outputs = (Output.objects.filter(job__owner=user).exclude(trajectory=[])
               .select_related("job").order_by("-created"))
    return list(outputs[:RECENT_IMAGES])


def denoising_path(output: Output) -> dict:
    """The stored frames of one image: each step's predicted x₀, as its preview drew it."""
    frames = output.trajectory
    total = output.recipe.get("steps") or output.job.total_steps
    picks = sorted({round(k * (len(frames) - 1) / (PATH_STRIP - 1)) for k in range(PATH_STRIP)})
    return {
        "frames": [{"step": f["step"], "image": f["image"]} for f in frames],
        "strip": [frames[k] for k in picks],
        "total": total,
        "prompt": output.recipe.get("prompt", ""),
    }

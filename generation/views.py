"""Pages and JSON endpoints of the generate flow. Thin: rules live in services."""

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from . import recipes, services
from .models import Job
from .presenters import job_state
from .workers import worker_summary


@login_required
def generate(request):
    recent = services.jobs_for_page(user=request.user)
    last = recent[0].recipe.get("seed") if recent else None
    context = {
        "initial": recipes.form_initial(request.GET),
        "models": recipes.model_names(),
        "samplers": recipes.sampler_names(),
        "recent_jobs": recent,
        "last_seed": last,
    }
    return render(request, "generation/generate.html", context)


@login_required
@require_POST
def job_submit(request):
    try:
        recipe = recipes.recipe_from_params(request.POST)
        job = services.job_submit(user=request.user, recipe=recipe)
    except recipes.InvalidParams as exc:
        return JsonResponse({"errors": exc.errors}, status=400)
    except services.LimitExceeded as exc:
        response = JsonResponse({"errors": {"__all__": str(exc)}}, status=429)
        response["Retry-After"] = str(exc.retry_after)
        return response
    return JsonResponse({"job": job_state(job)}, status=201)


def _job_or_404(request, job_id) -> Job:
    job = services.get_job_for_user(user=request.user, job_id=job_id)
    if job is None:
        raise Http404
    return job


@login_required
def job_detail(request, job_id):
    return JsonResponse({"job": job_state(_job_or_404(request, job_id))})


@login_required
@require_POST
def job_cancel(request, job_id):
    job = _job_or_404(request, job_id)
    try:
        services.job_cancel(job=job, actor=request.user)
    except services.NotJobOwner:
        raise Http404 from None
    return JsonResponse({"job": job_state(job)})


@staff_member_required
def staff_queue(request):
    context = {
        "workers": worker_summary(),
        "queues": services.queue_summary(),
        "running": Job.objects.filter(status=Job.Status.RUNNING).select_related("owner"),
        "heartbeat_timeout": settings.STUDIO_HEARTBEAT_TIMEOUT,
    }
    return render(request, "generation/staff.html", context)

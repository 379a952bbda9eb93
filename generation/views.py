"""Pages and JSON endpoints of the generate flow. Thin: rules live in services."""

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from . import job_request, metrics_view, recipes, selectors, services
from .forms import generate_form
from .models import Job
from .presenters import job_state
from .workers import staff_workers


@login_required
def generate(request):
    recent = selectors.jobs_for_page(user=request.user)
    last = recent[0].recipe.get("seed") if recent else None
    context = {
        "form": generate_form(request.GET),
        "recent_jobs": recent,
        "last_seed": last,
        # The page refuses a plainly too large input before sending it; the server decides.
        "input_limits": {"bytes": settings.STUDIO_INPUT_MAX_BYTES,
                         "pixels": settings.STUDIO_INPUT_MAX_PIXELS},
    }
    return render(request, "generation/generate.html", context)


@login_required
@require_POST
def job_submit(request):
    """The form's fields as a request; a refusal is the form's errors by field, which
    generate.js shows next to each."""
    try:
        job = recipes.submit(user=request.user, request=job_request.parse(request.POST))
    except job_request.Refused as exc:
        return JsonResponse({"errors": exc.errors}, status=exc.status(400), headers=exc.headers)
    return JsonResponse({"job": job_state(selectors.job_view(job))}, status=201)


def _job_or_404(request, job_id) -> Job:
    job = selectors.get_job_for_user(user=request.user, job_id=job_id)
    if job is None:
        raise Http404
    return job


@login_required
def job_detail(request, job_id):
    return JsonResponse({"job": job_state(selectors.job_view(_job_or_404(request, job_id)))})


@login_required
@require_POST
def job_cancel(request, job_id):
    job = _job_or_404(request, job_id)
    try:
        services.job_cancel(job=job, actor=request.user)
    except services.NotJobOwner:
        raise Http404 from None
    return JsonResponse({"job": job_state(selectors.job_view(job))})


@staff_member_required
def staff_queue(request):
    context = {
        "workers": staff_workers(),
        "queues": selectors.queue_summary(),
        "running": Job.objects.filter(status=Job.Status.RUNNING).select_related("owner"),
        "heartbeat_timeout": settings.STUDIO_HEARTBEAT_TIMEOUT,
        "figures": metrics_view.staff_figures(),
    }
    return render(request, "generation/staff.html", context)

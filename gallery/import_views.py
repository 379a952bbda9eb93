"""Importing a PNG (or JPEG/WebP) and the page of what was read from it."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from . import imports, services
from .reproduce import reproductions_for
from .views import start_reproduction


def _import_or_404(request, import_id):
    imported = imports.get_import_for_user(user=request.user, import_id=import_id)
    if imported is None:
        raise Http404
    return imported


@login_required
def import_upload(request):
    status = 200
    if request.method == "POST":
        try:
            imported = imports.import_create(owner=request.user, upload=request.FILES.get("image"))
            return redirect(imported)
        except imports.ImportRefused as exc:
            messages.error(request, str(exc))
            status = 400
    context = {
        "imports": imports.imports_owned(request.user)[:20],
        "max_mib": imports.max_bytes() // 2**20,
        "max_pixels": imports.max_pixels(),
    }
    return render(request, "gallery/import_upload.html", context, status=status)


@login_required
def import_detail(request, import_id):
    imported = _import_or_404(request, import_id)
    recipe = imports.import_recipe(imported)
    context = {
        "imported": imported,
        "recipe": recipe,
        "has_recipe": bool(imported.recipe or imported.parameters),
        "remix_url": reverse("generate") + "?" + services.remix_query(recipe),
        "reproductions": reproductions_for(user=request.user, imported=imported),
    }
    return render(request, "gallery/import_detail.html", context)


@login_required
def import_file(request, import_id):
    imported = _import_or_404(request, import_id)
    response = FileResponse(imported.file.open("rb"), content_type=imported.content_type)
    response["Cache-Control"] = "private, max-age=300"
    return response


@login_required
@require_POST
def import_reproduce(request, import_id):
    imported = _import_or_404(request, import_id)
    start_reproduction(request, imported=imported)
    return redirect(imported.get_absolute_url() + "#reproductions")


@login_required
@require_POST
def import_delete(request, import_id):
    imported = _import_or_404(request, import_id)
    imports.import_delete(imported=imported, actor=request.user)
    messages.success(request, "The imported file is deleted.")
    return redirect("import_upload")

"""Importing a PNG (or JPEG/WebP) and the page of what was read from it."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from generation.models import StoredRecipe

from . import imports, limits, services
from .reproduce import reproductions_for
from .views import start_reproduction


def _import_or_404(request, import_id):
    imported = imports.get_import_for_user(user=request.user, import_id=import_id)
    if imported is None:
        raise Http404
    return imported


@csrf_exempt  # checked by _import_upload, once the upload cap is in place
@login_required
def import_upload(request):
    # The cap goes in before anything reads the body; CSRF middleware would read it first.
    cap = limits.cap_uploads(request, max_bytes=imports.max_bytes())
    return _import_upload(request, cap)


@csrf_protect
def _import_upload(request, cap: limits.CappedUploadHandler):
    status = 200
    if request.method == "POST":
        try:
            upload = request.FILES.get("image")
            cap.check()
            imported = imports.import_create(owner=request.user, upload=upload)
            return redirect(imported)
        except limits.UploadTooLarge as exc:
            messages.error(request, str(exc))
            status = 413
        except services.GalleryError as exc:  # refused, or the owner's cap is reached
            messages.error(request, str(exc))
            status = 400
    context = {
        "imports": imports.imports_owned(request.user)[:20],
        "max_size": imports.max_bytes(),
        "max_pixels": imports.max_pixels(),
        "max_imports": settings.STUDIO_MAX_IMPORTS_PER_USER,
    }
    return render(request, "gallery/import_upload.html", context, status=status)


@login_required
def import_detail(request, import_id):
    imported = _import_or_404(request, import_id)
    recipe = imports.import_recipe(imported)
    context = {
        "imported": imported,
        "recipe": recipe,
        "seed": StoredRecipe(recipe).image_seed,
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
    try:
        imports.import_delete(imported=imported, actor=request.user)
    except services.GalleryError as exc:
        messages.error(request, str(exc))
        return redirect(imported)
    messages.success(request, "The imported file is deleted.")
    return redirect("import_upload")

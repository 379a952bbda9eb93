from django.apps import AppConfig
from django.db.models.signals import post_delete
from PIL import PngImagePlugin

# Pillow decompresses a PNG's text chunks as it opens the file, up to 64 MB of them by
# default, before Studio can look at their length. Imports read at most a recipe and a
# parameters text (engine.MAX_RECIPE_CHARS, 1 MiB, and MAX_PARAMETERS_CHARS, 64 KiB); larger
# ones are refused anyway, so Pillow stops at a few times that. Pillow's documented,
# process-wide knobs.
TEXT_CHUNK_LIMIT = 4 * 2**20


class GalleryConfig(AppConfig):
    name = "gallery"
    verbose_name = "Gallery"

    def ready(self):
        from generation.signals import job_succeeded

        PngImagePlugin.MAX_TEXT_CHUNK = TEXT_CHUNK_LIMIT
        PngImagePlugin.MAX_TEXT_MEMORY = 2 * TEXT_CHUNK_LIMIT

        from .files import import_deleted
        from .models import PngImport
        from .receivers import add_job_outputs

        job_succeeded.connect(add_job_outputs, dispatch_uid="gallery.add_job_outputs")
        post_delete.connect(import_deleted, sender=PngImport, dispatch_uid="gallery.import_file")

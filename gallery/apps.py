from django.apps import AppConfig


class GalleryConfig(AppConfig):
    name = "gallery"
    verbose_name = "Gallery"

    def ready(self):
        from generation.signals import job_succeeded

        from .receivers import add_job_outputs

        job_succeeded.connect(add_job_outputs, dispatch_uid="gallery.add_job_outputs")

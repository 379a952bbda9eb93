from django.apps import AppConfig
from django.db.models.signals import post_delete


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = "Generation"

    def ready(self):
        from .files import input_deleted, output_deleted
        from .models import InputImage, Output

        post_delete.connect(output_deleted, sender=Output, dispatch_uid="generation.output_file")
        post_delete.connect(input_deleted, sender=InputImage, dispatch_uid="generation.input_file")

"""``python manage.py samplers [--json]``: the sampler names a recipe may use."""

import json

from django.core.management.base import BaseCommand

from generation import engine


class Command(BaseCommand):
    help = "List the samplers, by their AUTOMATIC1111 names."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="one JSON list")

    def handle(self, *args, **options):
        names = list(engine.SAMPLERS)
        self.stdout.write(json.dumps(names) if options["json"] else "\n".join(names))

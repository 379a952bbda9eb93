"""``python manage.py evaluate_demo_model [--json] [--model DIR] [--prompts N] [--grids DIR]``."""

from django.core.management.base import BaseCommand

from generation.demo_model import evaluate


class Command(BaseCommand):
    help = "Measure the demo model's prompt adherence per guidance and sampler, and its speed."

    def add_arguments(self, parser):
        evaluate.add_arguments(parser)

    def handle(self, *args, **options):
        self.stdout.write(evaluate.main(options))

"""``python manage.py train_demo_model --out DIR [--minutes N] [--device cpu|cuda] [--resume]``."""

from django.core.management.base import BaseCommand

from generation.demo_model import train


class Command(BaseCommand):
    help = "Train the bundled demo model (VAE, then UNet + text encoder) into DIR."

    def add_arguments(self, parser):
        train.add_arguments(parser)

    def handle(self, *args, **options):
        target = train.train(train.config_from(options), resume=options["resume"])
        self.stdout.write(f"Saved the pipeline to {target}")

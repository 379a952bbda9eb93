"""``python manage.py models [--json]``: the known models, their sources and weights' hashes."""

import json

from django.core.management.base import BaseCommand

from generation import engine, registry


class Command(BaseCommand):
    help = "List the known models: name, source (what from_pretrained loads) and weights hash."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="one JSON list")

    def handle(self, *args, **options):
        rows = [_row(name, source) for name, source in registry.models().items()]
        if options["json"]:
            self.stdout.write(json.dumps(rows))
        else:
            self.stdout.write("\n".join(f"{r['name']}\t{r['source']}\t{r['hash']}" for r in rows))


def _row(name: str, source: str) -> dict:
    try:
        digest = engine.weights_hash(source)
    except engine.ModelLoadError:
        digest = None  # registered, but its files are missing or unreadable
    return {"name": name, "source": source, "hash": digest}

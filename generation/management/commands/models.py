"""``python manage.py models [--json]``: the known models, their sources, weights' hashes,
families and native sizes. Hashes what the database does not know yet (generation.registry),
so a web request never has to: run it after dropping a checkpoint into the models folder."""

import json

from django.core.management.base import BaseCommand

from generation import engine, registry


class Command(BaseCommand):
    help = ("List the known models: name, source, weights hash, family and native size. "
            "Hashes the weights the database does not know yet.")

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true",
                            help='one JSON list of {"name", "source", "hash", "family", '
                                 '"native_size"}')

    def handle(self, *args, **options):
        rows = [self._row(name, source) for name, source in registry.models().items()]
        if options["json"]:
            self.stdout.write(json.dumps(rows))
        else:
            self.stdout.write("\n".join(
                "\t".join(str(row[key]) for key in ("name", "source", "hash", "family",
                                                    "native_size"))
                for row in rows
            ))

    def _row(self, name: str, source: str) -> dict:
        """A model's row; a null hash, family or size where its files are missing or
        unreadable (said on stderr), since a listing must go on past one broken model."""
        row = {"name": name, "source": source, "hash": None, "family": None,
               "native_size": None}
        try:
            spec = engine.load_spec(source)
            row.update(family=family_name(spec), native_size=spec.native_size)
        except engine.ModelLoadError as exc:
            self.stderr.write(f"{name}: cannot read its configs: {exc}")
        if registry.known_hash(source) is None:
            self.stderr.write(f"{name}: hashing its weights…")
        try:
            row["hash"] = registry.weights_hash(source)
        except engine.ModelLoadError as exc:
            self.stderr.write(f"{name}: cannot hash its weights: {exc}")
        return row


def family_name(spec: engine.ModelSpec) -> str | None:
    """The spec's family (SD 1.x, SD 2.x, SDXL) by name, None where the spec names none."""
    family = getattr(spec, "family", None)
    if family is None or isinstance(family, str):
        return family
    return getattr(family, "name", str(family))

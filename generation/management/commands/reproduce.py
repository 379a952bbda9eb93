"""``python manage.py reproduce IMAGE.png --out DIR [--json]``: re-run the recipe in a PNG,
from the input image and mask stored on this server when the recipe names them."""

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from PIL import Image

from generation import engine, inputs, registry


class Command(BaseCommand):
    help = "Re-run the recipe stored in a PNG and say whether the pixels came out the same."

    def add_arguments(self, parser):
        parser.add_argument("image", type=Path)
        parser.add_argument("--out", required=True, type=Path)
        parser.add_argument("--json", action="store_true", help="end with one JSON line")

    def handle(self, *args, **options):
        data = options["image"].read_bytes()
        recipe, _ = engine.read_png(data)
        if recipe is None:
            raise CommandError(f"{options['image']} carries no studio_recipe")
        files = stored_inputs(recipe.to_json())
        device, dtype = registry.device()
        try:
            pipeline = engine.load_pipeline(recipe.model.source, device=device, dtype=dtype)
            with Image.open(options["image"]) as original:
                image, comparison = engine.reproduce(recipe, original, pipeline=pipeline,
                                                     inputs=files)
        except (engine.WeightsMismatchError, engine.ModelLoadError, engine.RecipeError) as exc:
            raise CommandError(str(exc)) from exc
        out = options["out"].resolve()
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{recipe.image_seed}-{recipe.batch_index}.png"
        path.write_bytes(engine.png_with_recipe(image, recipe))
        if options["json"]:
            self.stdout.write(json.dumps({"file": str(path), **comparison.to_json()}))
        else:
            self.stdout.write(
                f"{comparison.verdict} (max difference {comparison.max_diff}, "
                f"PSNR {comparison.psnr:.2f} dB): {path}"
            )


def stored_inputs(recipe: dict) -> dict[str, bytes]:
    """sha256 -> PNG bytes of the input image and mask the recipe names, found by hash among
    the inputs stored on this server (whoever sent them: inputs.find); CommandError naming
    the one that is gone."""
    try:
        return {image.sha256: data for image, data in inputs.files_named(recipe, inputs.find)}
    except inputs.InputGone as exc:
        raise CommandError(str(exc)) from exc

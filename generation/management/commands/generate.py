"""``python manage.py generate --prompt … --out DIR [--json]``: one PNG per image of the batch."""

import json
from dataclasses import replace
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from generation import engine, recipes, registry
from generation.job_request import Refused, parse


class Command(BaseCommand):
    help = "Generate images with the engine and write them, recipe embedded, as PNGs into DIR."

    def add_arguments(self, parser):
        parser.add_argument("--prompt", required=True)
        parser.add_argument("--negative-prompt", default="")
        parser.add_argument("--model", default=None, help="a name from `manage.py models`")
        parser.add_argument("--sampler", default=engine.DEFAULT_SAMPLER)
        parser.add_argument("--steps", type=int, default=engine.DEFAULT_STEPS)
        parser.add_argument("--guidance", type=float, default=engine.DEFAULT_GUIDANCE)
        parser.add_argument("--seed", type=int, default=None, help="default: a random seed")
        parser.add_argument("--subseed", type=int, default=0)
        parser.add_argument("--subseed-strength", type=float, default=0.0)
        parser.add_argument("--width", type=int, default=None, help="default: the model's size")
        parser.add_argument("--height", type=int, default=None)
        parser.add_argument("--batch", type=int, default=1)
        parser.add_argument("--lora", action="append", default=[], metavar="NAME[:WEIGHT]",
                            help="a LoRA from `GET /api/v1/loras` (repeatable; weight 1)")
        parser.add_argument("--out", required=True, type=Path)
        parser.add_argument("--json", action="store_true", help="end with one JSON line")

    def handle(self, *args, **options):
        recipe = _recipe(options)
        device, dtype = registry.device()
        pipeline = engine.load_pipeline(recipe.model.source, device=device, dtype=dtype)
        files = {lora.name: Path(registry.loras()[lora.name]) for lora in recipe.loras}
        result = engine.generate(recipe, pipeline=pipeline, preview=None, lora_files=files)
        lora_hashes = {name: engine.a1111_hash(path) for name, path in files.items()}
        out = options["out"].resolve()
        out.mkdir(parents=True, exist_ok=True)
        images = []
        for image, image_recipe in zip(result.images, result.recipes, strict=True):
            path = out / f"{image_recipe.image_seed}-{image_recipe.batch_index}.png"
            path.write_bytes(engine.png_with_recipe(image, image_recipe, lora_hashes))
            images.append({"file": str(path), "recipe": image_recipe.to_json()})
            if not options["json"]:
                self.stdout.write(str(path))
        if options["json"]:
            self.stdout.write(json.dumps({"images": images}))


def _recipe(options: dict) -> engine.Recipe:
    name = options["model"] or registry.default_name()
    model = registry.get(name)
    if model is None:
        raise CommandError(f"unknown model {name!r}; known: {', '.join(registry.models())}")
    try:
        loras = recipes.lora_refs(parse({"loras": options["lora"]}).loras, model)
    except Refused as exc:
        raise CommandError("\n".join(f"--lora: {v}" for v in exc.errors.values())) from exc
    try:
        recipe = engine.build_recipe(
            model=model,
            prompt=options["prompt"],
            negative_prompt=options["negative_prompt"],
            sampler=options["sampler"],
            steps=options["steps"],
            guidance_scale=options["guidance"],
            seed=options["seed"],
            subseed=options["subseed"],
            subseed_strength=options["subseed_strength"],
            width=options["width"],
            height=options["height"],
            batch_size=options["batch"],
            loras=loras,
        )
    except engine.RecipeError as exc:
        raise CommandError(
            "\n".join(f"--{k.replace('_', '-')}: {v}" for k, v in exc.errors.items())
        ) from exc
    return replace(recipe, threads=registry.threads())

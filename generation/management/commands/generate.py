"""``python manage.py generate --prompt … --out DIR [--json]``: one PNG per image of the batch."""

import json
from dataclasses import replace
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from generation import engine, recipes, registry
from generation.job_request import DEFAULT_STRENGTH, JobRequest, Refused, parse


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
        parser.add_argument("--init-image", type=Path, help="a PNG, JPEG or WebP to start from")
        parser.add_argument("--mask", type=Path, help="white where the init image is repainted")
        parser.add_argument("--strength", type=float, default=None,
                            help=f"with --init-image; default {DEFAULT_STRENGTH}")
        parser.add_argument("--mask-blur", type=int, default=0)
        parser.add_argument("--no-paste-back", action="store_true",
                            help="leave the unmasked pixels as the pipeline decodes them")
        parser.add_argument("--hires-scale", type=float, default=None, help="hires fix: 1 to 4")
        parser.add_argument("--hires-steps", type=int, default=0)
        parser.add_argument("--hires-strength", type=float, default=None)
        parser.add_argument("--hires-upscaler", default=None, choices=engine.UPSCALERS)
        parser.add_argument("--out", required=True, type=Path)
        parser.add_argument("--json", action="store_true", help="end with one JSON line")

    def handle(self, *args, **options):
        request = _request(options)
        recipe = _recipe(options, request)
        device, dtype = registry.device()
        pipeline = engine.load_pipeline(recipe.model.source, device=device, dtype=dtype)
        files = {lora.name: Path(registry.loras()[lora.name]) for lora in recipe.loras}
        result = engine.generate(recipe, pipeline=pipeline, preview=None, lora_files=files,
                                 inputs={data.sha256: data.png for data in
                                         (request.init_image, request.mask) if data})
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


# The request's names for the options that differ.
OPTIONS = {"loras": "lora", "guidance_scale": "guidance", "batch_size": "batch"}


def _request(options: dict) -> JobRequest:
    """The options the request reads (LoRAs, the input image and mask, image to image's and
    the hires fix's), checked as every door checks them."""
    params = {"loras": options["lora"], "paste_back": not options["no_paste_back"]}
    for name in ("init_image", "mask"):
        if options[name] is not None:
            params[name] = options[name].read_bytes()
    for name in ("strength", "mask_blur", "width", "height", "hires_scale", "hires_steps",
                 "hires_strength", "hires_upscaler"):
        params[name] = options[name]
    try:
        return parse(params)
    except Refused as exc:
        raise CommandError(_messages(exc.errors)) from exc


def _messages(errors: dict[str, str]) -> str:
    return "\n".join(f"--{OPTIONS.get(key.split('.')[0], key).replace('_', '-')}: {message}"
                     for key, message in errors.items())


def _recipe(options: dict, request: JobRequest) -> engine.Recipe:
    name = options["model"] or registry.default_name()
    model = registry.get(name)
    if model is None:
        raise CommandError(f"unknown model {name!r}; known: {', '.join(registry.models())}")
    try:
        loras = recipes.lora_refs(request.loras, model)
    except Refused as exc:
        raise CommandError(_messages(exc.errors)) from exc
    sizes = {"width": options["width"], "height": options["height"]}
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
            batch_size=options["batch"],
            loras=loras,
            **{**sizes, **recipes.image_to_image(request, model)},
        )
    except engine.RecipeError as exc:
        raise CommandError(_messages(recipes.request_names(exc.errors))) from exc
    return replace(recipe, threads=registry.threads())

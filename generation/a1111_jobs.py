"""A1111's image calls as Studio jobs, txt2img's (generation/compat_a1111.py) and img2img's
(generation/compat_a1111_images.py) alike: the model a call uses when it names none, the
error the endpoints answer, and the images of a finished job in A1111's shape, `{"images",
"parameters", "info"}`."""

import base64
import json

from . import engine, registry, waiting
from .a1111_request import A1111Fields
from .models import DefaultModel, Job, Output


class A1111Error(Exception):
    """An answer other than 200: `{"detail": message, "errors": {field: message}}` with the
    status, naming A1111's fields (compat_a1111 renders it)."""

    def __init__(self, status: int, errors: dict[str, str], headers: dict | None = None):
        super().__init__(errors)
        self.status, self.errors, self.headers = status, errors, headers or {}


def own_model(user) -> str | None:
    """The model the caller chose with POST /sdapi/v1/options, if they did."""
    return DefaultModel.objects.filter(user=user).values_list("model", flat=True).first()


def default_model(user, body: A1111Fields) -> str | None:
    """The caller's own model for a call that names none (None: the server's); refused by
    name when it has left the server since they chose it, rather than drawn with another."""
    if body.override_settings and body.override_settings.sd_model_checkpoint:
        return None
    name = own_model(user)
    if name is not None and name not in registry.models():
        raise A1111Error(422, {"sd_model_checkpoint": (
            f"Your model “{name}” (POST /sdapi/v1/options) is no longer on this server; "
            "choose another there or in override_settings.")})
    return name


def denoising_strength(recipe: dict) -> float | None:
    """A1111's `denoising_strength` of a recipe: img2img's strength, else the hires fix's."""
    if recipe.get("strength") is not None:
        return recipe["strength"]
    return (recipe.get("hires") or {}).get("strength")


def info(job: Job, outputs: list[Output]) -> dict:
    """A1111's `info`: the batch's seeds and each image's infotext (its PNG `parameters`)."""
    recipe = job.recipe
    count = len(outputs)
    # The worker completes each image's recipe with the versions that ran it, and with the
    # weights' hash, which a recipe built in a web request may lack.
    ran = outputs[0].recipe if outputs else recipe
    versions = ran.get("versions") or {}
    return {
        "prompt": recipe["prompt"], "all_prompts": [recipe["prompt"]] * count,
        "negative_prompt": recipe["negative_prompt"],
        "all_negative_prompts": [recipe["negative_prompt"]] * count,
        "seed": recipe["seed"], "all_seeds": [recipe["seed"] + i for i in range(count)],
        "subseed": recipe["subseed"],
        "all_subseeds": [recipe["subseed"] + i for i in range(count)],
        "subseed_strength": recipe["subseed_strength"],
        "width": recipe["width"], "height": recipe["height"], "sampler_name": recipe["sampler"],
        "cfg_scale": recipe["guidance_scale"], "steps": recipe["steps"],
        "batch_size": recipe["batch_size"], "restore_faces": False,
        "denoising_strength": denoising_strength(recipe),
        "sd_model_name": recipe["model"]["name"], "sd_model_hash": ran["model"]["hash"][:10],
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "styles": [],
        "extra_generation_params": {}, "index_of_first_image": 0, "clip_skip": 1,
        "job_timestamp": job.queued_at.strftime("%Y%m%d%H%M%S"),
        "infotexts": [
            engine.format_parameters(engine.Recipe.from_json(o.recipe)) for o in outputs
        ],
        "version": f"studio-{versions.get('studio', '')}",
        "studio": {"job": str(job.pk), "images": [o.get_page_url() for o in outputs]},
    }


async def images_answer(job: Job, *, send_images: bool, parameters: dict) -> dict:
    """Wait for the job (without a thread, generation/waiting.py) and answer with its images
    as base64 PNGs, `parameters` (the request as A1111 echoes it) and `info`. A job that ends
    without images is an A1111Error with waiting's status (409 when it was interrupted)."""
    try:
        outputs = await waiting.wait_for_outputs(job)
    except waiting.NoImages as exc:
        raise A1111Error(exc.status, {"__all__": exc.message}) from exc
    pngs = await waiting.read_pngs(outputs) if send_images else []
    return {
        "images": [base64.b64encode(png).decode() for png in pngs],
        "parameters": parameters,
        "info": json.dumps(info(job, outputs)),
    }

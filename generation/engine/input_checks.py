"""Validation of a recipe's image-to-image fields (``inputs.py``), one message per bad field,
keyed as the recipe's JSON names it: ``strength``, ``mask``, ``hires.scale``. Light."""

from typing import Any

from .inputs import MAX_INPUT_PIXELS, MAX_MASK_BLUR, UPSCALERS, Hires, ImageRef, MaskRef
from .recipe import MAX_STEPS, ModelLimits, Recipe, _is_int, _is_number, shown


def input_errors(recipe: Recipe, limits: ModelLimits, *, inpainting: bool) -> dict[str, str]:
    """Errors of the init image, strength, mask, mask blur, paste-back and hires fields,
    given the model's size limits and whether it is a 9-channel inpainting model."""
    errors: dict[str, str] = {}
    image = recipe.init_image
    if image is not None and not isinstance(image, ImageRef):
        return {"init_image": "must be an image reference"}
    if image is not None:
        errors.update(_image_errors(image))
    errors.update(_strength_errors(recipe))
    errors.update(_mask_errors(recipe))
    if recipe.hires is not None:
        errors.update(_hires_errors(recipe, limits))
    if inpainting and (image is None or recipe.mask is None):
        errors["mask"] = (
            "this is an inpainting model (its UNet takes 9 channels): it needs an init_image "
            "and a mask"
        )
    strength = recipe.subseed_strength
    if (image is not None or recipe.hires is not None) and _is_number(strength) and strength > 0:
        errors["subseed_strength"] = (
            "variation seeds work only for text to image without a hires fix: the image-to-"
            "image pipelines draw their own noise"
        )
    return errors


def _image_errors(image: ImageRef) -> dict[str, str]:
    errors = {}
    for key in ("width", "height"):
        value = getattr(image, key)
        if not _is_int(value) or value < 1:
            errors[f"init_image.{key}"] = f"must be a whole number of pixels, not {shown(value)}"
    if not errors and image.width * image.height > MAX_INPUT_PIXELS:
        errors["init_image"] = f"has more than {MAX_INPUT_PIXELS:,} pixels"
    return errors


def _strength_errors(recipe: Recipe) -> dict[str, str]:
    strength = recipe.strength
    if strength is None:
        if recipe.init_image is not None:
            return {"strength": "is needed with an init_image: a number from 0 to 1"}
        return {}
    if recipe.init_image is None:
        return {"strength": "applies only with an init_image; leave it null for text to image"}
    if not _is_number(strength) or not 0 <= strength <= 1:
        return {"strength": f"must be a number from 0 to 1, not {shown(strength)}"}
    return _runs_a_step("strength", recipe.steps, strength)


def _runs_a_step(key: str, steps: Any, strength: float) -> dict[str, str]:
    """diffusers runs int(steps * strength) steps; with none it fails, so refuse that here."""
    if not _is_int(steps) or not 1 <= steps <= MAX_STEPS or int(steps * strength) >= 1:
        return {}
    return {key: (
        f"runs int({steps} steps x {strength:g}) = 0 steps; it needs at least one: raise it "
        f"to {1 / steps:.3g} or more, or raise the steps"
    )}


def _mask_errors(recipe: Recipe) -> dict[str, str]:
    errors = {}
    if recipe.mask is not None:
        if not isinstance(recipe.mask, MaskRef):
            errors["mask"] = "must be a mask reference"
        elif recipe.init_image is None:
            errors["mask"] = "applies only with an init_image, the image it masks"
    blur = recipe.mask_blur
    if not _is_int(blur) or not 0 <= blur <= MAX_MASK_BLUR:
        errors["mask_blur"] = f"must be a whole number from 0 to {MAX_MASK_BLUR}, not {shown(blur)}"
    if not isinstance(recipe.paste_back, bool):
        errors["paste_back"] = f"must be true or false, not {shown(recipe.paste_back)}"
    return errors


def _hires_errors(recipe: Recipe, limits: ModelLimits) -> dict[str, str]:
    hires = recipe.hires
    if not isinstance(hires, Hires):
        return {"hires": "must be a hires reference"}
    if recipe.init_image is not None:
        return {"hires": "applies only to text to image (no init_image)"}
    errors = {}
    if not _is_number(hires.scale) or not 1 <= hires.scale <= 4:
        errors["hires.scale"] = f"must be a number from 1 to 4, not {shown(hires.scale)}"
    if not _is_int(hires.steps) or not 0 <= hires.steps <= MAX_STEPS:
        errors["hires.steps"] = (
            f"must be a whole number from 0 (the recipe's steps) to {MAX_STEPS}, "
            f"not {shown(hires.steps)}"
        )
    if not _is_number(hires.strength) or not 0 <= hires.strength <= 1:
        errors["hires.strength"] = f"must be a number from 0 to 1, not {shown(hires.strength)}"
    elif "hires.steps" not in errors:
        errors.update(_runs_a_step("hires.strength", hires.steps or recipe.steps, hires.strength))
    if not isinstance(hires.upscaler, str) or hires.upscaler not in UPSCALERS:
        errors["hires.upscaler"] = (
            f"unknown upscaler {shown(hires.upscaler)}; known: {', '.join(UPSCALERS)}"
        )
    if "hires.scale" not in errors and _is_int(recipe.width) and _is_int(recipe.height):
        width, height = hires.size(recipe.width, recipe.height)
        if max(width, height) > limits.max_size:
            errors["hires.scale"] = (
                f"makes {width}x{height}; this model takes at most {limits.max_size} a side"
            )
    return errors

"""Image-to-image runs: img2img, inpainting and the hires fix (docs/engine.md, "Image to
image").

Each pass is a stock diffusers pipeline (``StableDiffusionImg2ImgPipeline``,
``StableDiffusionInpaintPipeline`` or their SDXL twins) built over the shared pipeline's
modules (``models.run_view``), given the PIL image, the strength and the list of CPU
generators seed + i. Stock pipelines draw their randomness from those generators themselves
(the VAE's sample before the noise), so the pixels are stock's: nothing here draws latents
ahead of them. Every pass ends in latents; ``sampling.generate`` decodes them.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256

import torch
from PIL import Image, ImageFilter

from .errors import GenerationError, InputMissingError
from .inputs import LATENT_UPSCALERS, PIXEL_UPSCALERS, mask_size_error, open_input, steps_run
from .models import Pipeline, run_view
from .previews import vae_decode
from .recipe import Recipe
from .seeds import generators
from .stepper import Stepper


@dataclass(frozen=True)
class Inputs:
    """A run's decoded inputs: the init image (RGB) and its mask ("L", blurred by the
    recipe's ``mask_blur``), both at the init image's size; None for text to image."""

    image: Image.Image | None = None
    mask: Image.Image | None = None


def read_inputs(recipe: Recipe, given: Mapping[str, bytes] | None) -> Inputs:
    """The recipe's init image and mask from ``given`` (sha256 -> canonical PNG bytes),
    each checked against its hash and size; InputMissingError names one not given."""
    if recipe.init_image is None:
        return Inputs()
    ref = recipe.init_image
    image = _input(ref.sha256, given or {}, "init image")
    if image.size != (ref.width, ref.height):
        raise GenerationError(
            f"the init image {ref.sha256[:12]}... is {image.width}x{image.height}, but the "
            f"recipe says {ref.width}x{ref.height}"
        )
    if recipe.mask is None:
        return Inputs(image=image.convert("RGB"))
    mask = _input(recipe.mask.sha256, given or {}, "mask").convert("L")
    if error := mask_size_error(ref, mask.size):
        raise GenerationError(f"the mask {error}")
    if recipe.mask_blur:
        mask = mask.filter(ImageFilter.GaussianBlur(radius=recipe.mask_blur))
    return Inputs(image=image.convert("RGB"), mask=mask)


def _input(digest: str, given: Mapping[str, bytes], what: str) -> Image.Image:
    data = given.get(digest)
    if data is None:
        raise InputMissingError(digest, what)
    if sha256(data).hexdigest() != digest:
        raise GenerationError(f"the bytes given for the {what} {digest[:12]}... are another file")
    return open_input(data)


def from_image(pipe: Pipeline, recipe: Recipe, stepper: Stepper, inputs: Inputs) -> torch.Tensor:
    """img2img, or inpainting where the recipe has a mask: the init image resized to the
    recipe's size by the pipeline's own image processor, as stock would resize it."""
    image = pipe.image_processor.resize(inputs.image, recipe.height, recipe.width)
    if inputs.mask is None:
        return _img2img(pipe, recipe, stepper, image, recipe.strength, recipe.steps)
    mask = pipe.image_processor.resize(inputs.mask, recipe.height, recipe.width)
    view = run_view(pipe, _fresh(pipe), "inpaint")
    stepper.begin_pass(steps_run(recipe), pipe)
    return view(
        image=image,
        mask_image=mask,
        height=recipe.height,
        width=recipe.width,
        strength=recipe.strength,
        num_inference_steps=recipe.steps,
        **_common(recipe, stepper),
    ).images


def refine(pipe: Pipeline, recipe: Recipe, stepper: Stepper, latents: torch.Tensor) -> torch.Tensor:
    """The hires fix's second pass: the text-to-image latents upscaled to the hires size,
    then img2img with fresh generators. Latent upscalers resize the latents, which the
    img2img pipeline takes as they are (a 4-channel ``image``); pixel ones decode, resize
    with PIL and hand the pipeline the pictures, which it encodes again."""
    hires = recipe.hires
    width, height = hires.size(recipe.width, recipe.height)
    if hires.upscaler in LATENT_UPSCALERS:
        mode, antialias = LATENT_UPSCALERS[hires.upscaler]
        scale = pipe.vae_scale_factor
        image = torch.nn.functional.interpolate(
            latents, size=(height // scale, width // scale), mode=mode, antialias=antialias
        )
    else:
        resample = PIXEL_UPSCALERS[hires.upscaler]
        image = [picture.resize((width, height), resample) for picture in decode(pipe, latents)]
    return _img2img(pipe, recipe, stepper, image, hires.strength, hires.steps or recipe.steps)


def _img2img(
    pipe: Pipeline, recipe: Recipe, stepper: Stepper, image, strength: float, steps: int
) -> torch.Tensor:
    view = run_view(pipe, _fresh(pipe), "img2img")
    stepper.begin_pass(min(int(steps * strength), steps), pipe)
    return view(image=image, strength=strength, num_inference_steps=steps,
                **_common(recipe, stepper)).images


def _common(recipe: Recipe, stepper: Stepper) -> dict:
    """What every pass is called with: the prompts, guidance, the batch's fresh CPU
    generators, the step callback; latents out."""
    return {
        "prompt": recipe.prompt,
        "negative_prompt": recipe.negative_prompt or None,
        "num_images_per_prompt": recipe.batch_size,
        "guidance_scale": recipe.guidance_scale,
        "generator": generators(recipe.seed, recipe.batch_size),
        "output_type": "latent",
        "callback_on_step_end": stepper,
        "callback_on_step_end_tensor_inputs": stepper.tensor_inputs,
    }


def _fresh(pipe: Pipeline):
    """A new scheduler like the run's: a pass starts from none of another's state."""
    return type(pipe.scheduler).from_config(pipe.scheduler.config)


@torch.no_grad()
def decode(pipe: Pipeline, latents: torch.Tensor) -> list[Image.Image]:
    """The stock pipelines' decode (no safety checker, no watermark), with the text-to-image
    view, which knows its family's VAE (``previews.vae_decode``)."""
    image = vae_decode(pipe, latents)
    return pipe.image_processor.postprocess(
        image, output_type="pil", do_denormalize=[True] * len(image)
    )


def paste_back(
    pipe: Pipeline, images: list[Image.Image], recipe: Recipe, inputs: Inputs
) -> list[Image.Image]:
    """A1111's overlay: the init image's pixels back outside the (blurred) mask, the mask
    as the alpha of the generated pixels; both resized to the output's size as the run
    resized them (``from_image``). Stock diffusers keeps only what its VAE decodes."""
    if inputs.mask is None or not recipe.paste_back:
        return images
    original = pipe.image_processor.resize(inputs.image, recipe.height, recipe.width)
    mask = pipe.image_processor.resize(inputs.mask, recipe.height, recipe.width)
    return [Image.composite(image, original, mask) for image in images]

"""An AUTOMATIC1111 img2img request (`POST /sdapi/v1/img2img`, generation/compat_a1111_images.py)
in Studio's terms: txt2img's fields (generation/a1111_request.py) and the image's.

- `init_images`: one image, base64 or a data: URL. A1111 gives the images of a batch one
  init image each, in turn; Studio starts a batch from one image, so more than one is refused
  by name rather than quietly dropped.
- `mask` (white repaints; an image with transparent pixels masks by its alpha, as A1111
  reads it), `mask_blur` (pixels), `denoising_strength` (Studio's `strength`).
- `inpainting_fill`: 1, "original", works: the masked area starts from the image, as stock
  diffusers inpaints. 0 "fill", 2 "latent noise" and 3 "latent nothing" are refused by name.
- `inpaint_full_res` false (the whole picture) works; true ("only masked": crop, upscale,
  paste back) is refused by name. `inpainting_mask_invert` 1 repaints the mask's black
  instead: the mask is inverted here, before it is submitted.
- `resize_mode` 0, "just resize" to width × height, works; cropping and filling are refused.
- `initial_noise_multiplier` only at 1; `image_cfg_scale` (instruct-pix2pix models only) and
  `inpaint_full_res_padding` are accepted and ignored, as A1111 ignores them for the models
  Studio runs.
- Without a mask, the mask's fields are ignored whatever they say, as A1111 ignores them:
  webuiapi sends its defaults (`inpainting_fill` 0, `inpaint_full_res` true) on every call.
  With one, a field left out takes the value that works, not A1111's default, which Studio
  would refuse; `mask_blur` left out is A1111's 4.
"""

from typing import Any

from pydantic import create_model

from . import job_request
from .a1111_request import (
    FIELDS,
    HIRES,
    IMAGE_FIELDS,
    OWN,
    A1111Fields,
    shared_params,
    unsupported,
)
from .job_request import JobRequest, Refused
from .request_images import MaskData
from .request_images import typed as typed_image

# A1111's inpainting_fill values, by name.
FILLS = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}
RESIZE_MODES = {0: "just resize", 1: "crop and resize", 2: "resize and fill",
                3: "just resize (latent upscale)"}
A1111_MASK_BLUR = 4


class Img2ImgFields(A1111Fields):
    """img2img's own fields, as A1111 names them."""

    # Not Text: an image is no prompt. Its length is capped by engine.decode_data_url,
    # before it is decoded, and the body's by DATA_UPLOAD_MAX_MEMORY_SIZE.
    init_images: list[str] | None = None
    mask: str | None = None
    denoising_strength: float | None = None
    mask_blur: int | None = None
    inpainting_fill: int | None = None
    inpaint_full_res: bool | None = None
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    resize_mode: int | None = 0
    image_cfg_scale: float | None = None
    initial_noise_multiplier: float | None = None
    include_init_images: bool = False


# Like Txt2ImgIn: the request's shared fields by their names; `paste_back` among them, a
# Studio extension (true, as A1111 always pastes the image back outside the mask).
Img2ImgIn = create_model(
    "Img2ImgIn", __base__=Img2ImgFields,
    **job_request.schema_fields(
        leave_out={*FIELDS, *OWN, *HIRES, *(set(IMAGE_FIELDS) - {"paste_back"})}),
)

# Studio's names to img2img's.
IMG2IMG_NAMES = {**FIELDS, "init_image": "init_images", "strength": "denoising_strength"}


def image_errors(body: Img2ImgFields) -> dict[str, str]:
    """An error for each of img2img's own fields asking for what Studio does not do."""
    errors = {}
    count = len(body.init_images or ())
    if count != 1:
        errors["init_images"] = (
            "Send one image, base64 or a data: URL." if count == 0 else
            f"Send one image, not {count}: Studio starts a whole batch from one image."
        )
    if body.resize_mode not in (None, 0):
        errors["resize_mode"] = _refused(RESIZE_MODES, body.resize_mode, "0 (just resize)")
    if body.initial_noise_multiplier not in (None, 1):
        errors["initial_noise_multiplier"] = "Only 1 is supported; send 1 or leave it out."
    if not body.mask:
        return errors
    if body.inpainting_fill not in (None, 1):
        errors["inpainting_fill"] = _refused(FILLS, body.inpainting_fill, "1 (original)")
    if body.inpaint_full_res:
        errors["inpaint_full_res"] = ("Inpainting only the masked area is not supported; "
                                      "send false (the whole picture).")
    if body.inpainting_mask_invert not in (None, 0, 1):
        errors["inpainting_mask_invert"] = "Send 0 (repaint the white) or 1 (the black)."
    return errors


def _refused(names: dict[int, str], value: int, works: str) -> str:
    named = f"{value} ({names[value]})" if value in names else str(value)
    return f"{named} is not supported; send {works}."


def studio_request(body: Img2ImgFields, default_model: str | None = None) -> JobRequest:
    """The img2img request as Studio's; Refused names A1111's fields at fault (with
    IMG2IMG_NAMES). Nothing of the images is decoded before the other fields pass."""
    errors = {**unsupported(body), **image_errors(body)}
    if errors:
        raise Refused(errors)
    params: dict[str, Any] = {
        **shared_params(body, default_model), "init_image": body.init_images[0],
        "strength": body.denoising_strength,
    }
    if body.mask:
        params["mask"] = inverted(body.mask) if body.inpainting_mask_invert else body.mask
        params["mask_blur"] = A1111_MASK_BLUR if body.mask_blur is None else body.mask_blur
    return job_request.parse(params)


def inverted(mask: str) -> MaskData:
    """The mask with black and white swapped (made so when it is first decoded,
    request_images.MaskData): what A1111's `inpainting_mask_invert` 1 repaints. Refused
    names `mask`."""
    try:
        return typed_image(MaskData, mask, inverted=True)
    except ValueError as exc:
        raise Refused({"mask": str(exc)}) from exc

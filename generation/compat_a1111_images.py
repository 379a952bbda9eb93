"""AUTOMATIC1111's image to image calls, mounted on generation/compat_a1111.py's API (its auth
and error shapes): `POST /sdapi/v1/img2img`, `GET /sdapi/v1/upscalers` and
`/latent-upscale-modes`, and `POST /sdapi/v1/png-info`.

- img2img is one ordinary job, like txt2img: generation/a1111_img2img.py translates it (what
  works, what is refused by name) and its images answer in txt2img's shape. `parameters`
  echoes the request, the images left out (null) unless `include_init_images`, as A1111 does.
- upscalers lists every hires upscaler Studio runs (engine.UPSCALERS), the latent ones with
  the rest, since txt2img's `hr_upscaler` takes any of them; latent-upscale-modes lists the
  latent ones alone, as A1111 does.
- png-info reads an image's text chunks: A1111's `parameters`, parsed as A1111 parses them,
  and the others as `items`. The image is capped in bytes before it is decoded and in pixels
  from its header; its pixels are never decoded. Text after the image data (PNG allows it;
  neither Studio nor A1111 writes it there) is not read, nor JPEG and WebP EXIF comments.
"""


from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest
from ninja import Router
from pydantic import BaseModel

from studio.api import read_body

from . import a1111_img2img, a1111_request, engine, recipes
from .a1111_img2img import IMG2IMG_NAMES, Img2ImgIn
from .a1111_jobs import A1111Error, default_model, images_answer
from .job_request import Refused
from .models import Job

router = Router()


@sync_to_async
def read_and_submit(request: HttpRequest) -> tuple[Img2ImgIn, Job]:
    """Read, translate, validate and queue, in a thread: decoding the images is CPU work
    on the caller's data. A refusal is a 422 (429 over a limit) naming A1111's fields."""
    body = read_body(request, Img2ImgIn)
    try:
        studio_request = a1111_img2img.studio_request(body, default_model(request.auth, body))
        return body, recipes.submit(user=request.auth, request=studio_request)
    except Refused as exc:
        errors = a1111_request.a1111_errors(exc, body, IMG2IMG_NAMES)
        raise A1111Error(exc.status(422), errors, exc.headers) from exc


@router.post("/img2img")
async def img2img(request: HttpRequest):
    """Make the images and answer when they exist, as txt2img does. The body is Img2ImgIn,
    read by read_and_submit."""
    body, job = await read_and_submit(request)
    images = set() if body.include_init_images else {"init_images", "mask"}
    parameters = body.model_dump(exclude={"alwayson_scripts", *images, *(body.model_extra or ())})
    parameters.update(dict.fromkeys(images))
    return await images_answer(job, send_images=body.send_images, parameters=parameters)


# A1111 lists each upscaler with the factor its model was trained for; one that resamples has
# no model and takes any factor, and A1111 shows those at its default of 4.
UPSCALE = 4


@router.get("/upscalers")
def upscalers(request: HttpRequest):
    return [
        {"name": name, "model_name": None, "model_path": None, "model_url": None,
         "scale": UPSCALE}
        for name in engine.UPSCALERS
    ]


@router.get("/latent-upscale-modes")
def latent_upscale_modes(request: HttpRequest):
    return [{"name": name} for name in engine.UPSCALERS if name.startswith("Latent")]


# --- png-info ---------------------------------------------------------------------------

class PngInfoIn(BaseModel):
    # Not Text: an image; decode_data_url caps its length before decoding.
    image: str


# Every text an image may carry, together: the parameters and Studio's recipe at their most.
MAX_TEXT_CHARS = engine.MAX_PARAMETERS_CHARS + engine.MAX_RECIPE_CHARS


def image_texts(data: bytes) -> dict[str, str]:
    """The image's text chunks (PNG tEXt, zTXt and iTXt before the image data), read from
    its header without decoding a pixel; engine.InputError says what is wrong with it."""
    with engine.open_header(data, max_bytes=settings.STUDIO_INPUT_MAX_BYTES,
                            max_pixels=settings.STUDIO_INPUT_MAX_PIXELS) as image:
        texts = {key: value for key, value in image.info.items() if isinstance(value, str)}
    if sum(len(text) for text in texts.values()) > MAX_TEXT_CHARS:
        raise engine.InputError(f"carries more than {MAX_TEXT_CHARS:,} characters of text")
    return texts


def a1111_parameters(text: str) -> dict[str, str]:
    """`parameters` text as A1111's parse_generation_parameters gives it: the prompts, and
    each setting as text, a `WxH` value split into `Key-1` and `Key-2`."""
    parsed = engine.parse_parameters(text)
    parameters = {"Prompt": parsed["prompt"], "Negative prompt": parsed["negative_prompt"]}
    for key, value in parsed["settings"].items():
        width, x, height = value.partition("x")
        if x and width.isdigit() and height.isdigit():
            parameters[f"{key}-1"], parameters[f"{key}-2"] = width, height
        else:
            parameters[key] = value
    return parameters


@sync_to_async
def read_png_info(request: HttpRequest) -> dict:
    body = read_body(request, PngInfoIn)
    try:
        data = engine.decode_data_url(body.image.strip(),
                                      max_bytes=settings.STUDIO_INPUT_MAX_BYTES)
        texts = image_texts(data)
        info = texts.pop("parameters", "")
        return {"info": info, "items": texts, "parameters": a1111_parameters(info)}
    except engine.InputError as exc:
        raise A1111Error(422, {"image": f"The image {exc}."}) from exc
    except engine.ParametersTooLong as exc:
        raise A1111Error(422, {"image": str(exc)}) from exc


@router.post("/png-info")
async def png_info(request: HttpRequest):
    """An image's generation parameters: `{"info": its parameters text, "items": its other
    texts, "parameters": the text parsed}`. The body is `{"image": base64 or a data: URL}`,
    read in a thread."""
    return await read_png_info(request)

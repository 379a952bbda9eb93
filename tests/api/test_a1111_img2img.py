"""AUTOMATIC1111's img2img and txt2img's hires fix: the real `webuiapi` package against a live
server and a real Celery worker, and the translation and refusals without one."""

import base64
import io
import json

import numpy as np
import pytest
import webuiapi
from django.test import Client
from PIL import Image as PILImage

from generation import engine
from generation.a1111_img2img import Img2ImgIn, studio_request
from generation.a1111_request import Txt2ImgIn
from generation.a1111_request import studio_request as txt2img_request
from generation.job_request import Refused
from generation.models import InputImage, Job

TINY = {"sd_model_checkpoint": "tiny"}


def webui(server, user, token) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, username=user.username,
                             password=token(user), sampler="Euler a", steps=4)


def picture() -> PILImage.Image:
    """32×32 with detail everywhere: a gradient, so a repainted pixel shows."""
    x, y = np.meshgrid(np.arange(32), np.arange(32))
    pixels = np.stack([x * 8, y * 8, (x + y) * 4], axis=-1).astype(np.uint8)
    return PILImage.fromarray(pixels, "RGB")


def left_half_mask() -> PILImage.Image:
    """White (repaint) on the left half, black (keep) on the right."""
    mask = PILImage.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    return mask


def data_url(image: PILImage.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def pixels(image: PILImage.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# --- With the real client, a live server and a worker ------------------------------------


def test_img2img_with_a_mask_repaints_only_the_masked_area(
    studio_server, module_worker, alice, token, tiny
):
    api = webui(studio_server, alice, token)
    result = api.img2img(images=[picture()], mask_image=left_half_mask(), prompt="red circle",
                         seed=7, width=32, height=32, denoising_strength=0.9, mask_blur=0,
                         inpainting_fill=1, inpaint_full_res=False, override_settings=TINY)
    [image] = result.images
    assert image.size == (32, 32)
    out, original = pixels(image), pixels(picture())
    # The original is pasted back outside the mask, as A1111 does; inside, it is repainted.
    assert (out[:, 16:] == original[:, 16:]).all()
    assert np.abs(out[:, :16] - original[:, :16]).max() > 8
    recipe, parameters = engine.read_png(base64.b64decode(result.json["images"][0]))
    assert recipe.strength == 0.9 and recipe.mask is not None and recipe.mask_blur == 0
    assert recipe.init_image.width == 32 and recipe.paste_back is True
    assert parameters == result.info["infotexts"][0]
    assert result.info["denoising_strength"] == 0.9
    assert result.parameters["init_images"] is None  # include_init_images is false
    # The image and its mask are stored with the job, the caller's own.
    job = Job.objects.get(owner=alice)
    assert {i.kind for i in job.inputs.all()} == {InputImage.Kind.IMAGE, InputImage.Kind.MASK}


def test_img2img_without_a_mask_takes_webuiapis_defaults(
    studio_server, module_worker, alice, token, tiny
):
    # webuiapi sends mask_blur 4, inpainting_fill 0 and inpaint_full_res true on every call:
    # without a mask they mean nothing, as in A1111.
    result = webui(studio_server, alice, token).img2img(
        images=[picture()], prompt="blue square", seed=3, width=32, height=32,
        include_init_images=True, override_settings=TINY,
    )
    assert result.images[0].size == (32, 32)
    recipe, parameters = engine.read_png(base64.b64decode(result.json["images"][0]))
    assert recipe.mask is None and recipe.strength == 0.75
    assert "Denoising strength: 0.75" in parameters
    assert result.parameters["init_images"][0].startswith("data:image/png;base64,")


def test_txt2img_hires_fix_with_webuiapis_default_latent_upscaler(
    studio_server, module_worker, alice, token, tiny
):
    result = webui(studio_server, alice, token).txt2img(
        prompt="red circle", seed=5, width=32, height=32, enable_hr=True, hr_scale=2,
        denoising_strength=0.5, override_settings=TINY,
    )
    assert result.images[0].size == (64, 64)
    recipe, _ = engine.read_png(base64.b64decode(result.json["images"][0]))
    assert recipe.hires == engine.Hires(scale=2.0, steps=0, strength=0.5, upscaler="Latent")
    assert (recipe.width, recipe.height) == (32, 32)


# --- The translation, without a server -----------------------------------------------------


def img2img(**fields) -> Img2ImgIn:
    return Img2ImgIn(**{"prompt": "red circle", "init_images": [data_url(picture())],
                        "width": 32, "height": 32, **fields})


def refused(translate, body) -> dict[str, str]:
    with pytest.raises(Refused) as refusal:
        translate(body)
    return refusal.value.errors


def test_the_image_and_strength_are_studios_init_image_and_strength():
    request = studio_request(img2img(denoising_strength=0.4, mask_blur=3, steps=9))
    assert request.init_image.width == 32 and request.strength == 0.4
    assert request.mask is None and request.mask_blur == 0  # no mask: its fields mean nothing
    assert request.steps == 9


def test_a_mask_left_at_a1111s_defaults_works_and_blurs_4_pixels():
    request = studio_request(img2img(mask=data_url(left_half_mask())))
    assert request.mask is not None and request.mask_blur == 4 and request.paste_back


def test_mask_invert_repaints_the_black_instead():
    plain = studio_request(img2img(mask=data_url(left_half_mask()), inpainting_fill=1))
    inverted = studio_request(img2img(mask=data_url(left_half_mask()), inpainting_fill=1,
                                      inpainting_mask_invert=1))
    plain_mask = np.asarray(PILImage.open(io.BytesIO(plain.mask.png)))
    inverted_mask = np.asarray(PILImage.open(io.BytesIO(inverted.mask.png)))
    assert (plain_mask[:, :16] == 255).all() and (inverted_mask[:, :16] == 0).all()
    assert (inverted_mask == 255 - plain_mask).all()


@pytest.mark.parametrize(("fields", "named"), [
    ({"inpainting_fill": 0}, "inpainting_fill"),
    ({"inpainting_fill": 2}, "inpainting_fill"),
    ({"inpainting_fill": 3}, "inpainting_fill"),
    ({"inpaint_full_res": True}, "inpaint_full_res"),
    ({"inpainting_mask_invert": 2}, "inpainting_mask_invert"),
])
def test_mask_options_studio_lacks_are_refused_by_name(fields, named):
    body = img2img(mask=data_url(left_half_mask()), **{"inpainting_fill": 1, **fields})
    assert list(refused(studio_request, body)) == [named]


@pytest.mark.parametrize(("fields", "named"), [
    ({"init_images": []}, "init_images"),
    ({"init_images": None}, "init_images"),
    ({"init_images": [data_url(picture())] * 2}, "init_images"),
    ({"resize_mode": 1}, "resize_mode"),
    ({"initial_noise_multiplier": 1.1}, "initial_noise_multiplier"),
    ({"restore_faces": True}, "restore_faces"),
])
def test_what_studio_cannot_do_is_refused_by_name(fields, named):
    assert named in refused(studio_request, img2img(**fields))


def test_webuiapis_img2img_defaults_are_accepted():
    defaults = {
        "resize_mode": 0, "denoising_strength": 0.75, "image_cfg_scale": 1.5, "mask_blur": 4,
        "inpainting_fill": 0, "inpaint_full_res": True, "inpaint_full_res_padding": 0,
        "inpainting_mask_invert": 0, "initial_noise_multiplier": 1, "styles": [], "seed": -1,
        "subseed": -1, "subseed_strength": 0, "seed_resize_from_h": 0, "seed_resize_from_w": 0,
        "batch_size": 1, "n_iter": 1, "steps": 4, "cfg_scale": 7.0, "restore_faces": False,
        "tiling": False, "do_not_save_samples": False, "do_not_save_grid": False,
        "negative_prompt": "", "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0,
        "s_noise": 1, "override_settings": {}, "override_settings_restore_afterwards": True,
        "sampler_name": "Euler a", "scheduler": "automatic", "sampler_index": "Euler a",
        "include_init_images": False, "script_name": None, "script_args": [],
        "send_images": True, "save_images": False, "alwayson_scripts": {},
    }
    request = studio_request(img2img(**defaults))
    assert request.strength == 0.75 and request.mask is None


def txt2img(**fields) -> Txt2ImgIn:
    return Txt2ImgIn(prompt="red circle", width=32, height=48, **fields)


def test_enable_hr_asks_for_the_hires_fix():
    request = txt2img_request(txt2img(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=3,
                                      denoising_strength=0.6, hr_upscaler="Lanczos"))
    assert (request.hires_scale, request.hires_steps, request.hires_strength,
            request.hires_upscaler) == (1.5, 3, 0.6, "Lanczos")
    assert txt2img_request(txt2img(enable_hr=True)).hires_upscaler == "Latent"
    # Switched off, the hr_ fields mean nothing, whatever they say.
    off = txt2img_request(txt2img(enable_hr=False, hr_scale=99, hr_resize_x=7,
                                  hr_sampler_name="DDIM"))
    assert off.hires_scale is None


def test_a_hires_size_in_proportion_is_a_scale():
    assert txt2img_request(txt2img(enable_hr=True, hr_resize_x=64)).hires_scale == 2
    assert txt2img_request(txt2img(enable_hr=True, hr_resize_y=72)).hires_scale == 1.5
    both = txt2img_request(txt2img(enable_hr=True, hr_resize_x=64, hr_resize_y=96))
    assert both.hires_scale == 2


@pytest.mark.parametrize(("fields", "named"), [
    ({"hr_resize_x": 64, "hr_resize_y": 64}, "hr_resize_x"),  # not 32×48's proportions
    ({"hr_resize_x": 60}, "hr_resize_x"),  # not a multiple of 8
    ({"hr_sampler_name": "DDIM", "sampler_name": "Euler a"}, "hr_sampler_name"),
    ({"hr_scheduler": "Karras"}, "hr_scheduler"),
    ({"hr_checkpoint_name": "other"}, "hr_checkpoint_name"),
    ({"hr_prompt": "another prompt"}, "hr_prompt"),
    ({"hr_resize_x": 64, "width": 0}, "hr_resize_x"),
    ({"hr_resize_x": -64}, "hr_resize_x"),
])
def test_a_hires_pass_studio_cannot_run_is_refused_by_name(fields, named):
    body = Txt2ImgIn(**{"prompt": "red circle", "width": 32, "height": 48, "enable_hr": True,
                        **fields})
    assert named in refused(txt2img_request, body)


def test_same_sampler_and_webuiapis_hr_defaults_are_accepted():
    request = txt2img_request(txt2img(
        enable_hr=True, sampler_name="Euler a", hr_sampler_name="Euler a", hr_scheduler=None,
        hr_checkpoint_name=None, hr_prompt="", hr_negative_prompt="", hr_resize_x=0,
        hr_resize_y=0, firstphase_width=0, firstphase_height=0,
    ))
    assert request.hires_scale == 2


# --- The endpoint refuses before anything is stored ---------------------------------------


@pytest.fixture
def a1111(token, alice, tiny):
    client = Client(headers={"Authorization": f"Bearer {token(alice)}"})
    return lambda path, **fields: client.post(path, json.dumps(fields),
                                              content_type="application/json")


@pytest.mark.django_db
@pytest.mark.parametrize(("fields", "named"), [
    ({"init_images": ["data:image/png;base64,bm90IGFuIGltYWdl"]}, "init_images"),
    ({"init_images": ["%%%"]}, "init_images"),
    ({"mask": data_url(PILImage.new("L", (16, 16))), "inpainting_fill": 1,
      "inpaint_full_res": False}, "mask"),
    ({"denoising_strength": 0.1, "steps": 4}, "denoising_strength"),  # int(0.4) steps
    ({"denoising_strength": 1.5}, "denoising_strength"),
    ({"subseed_strength": 0.5}, "subseed_strength"),
])
def test_a_bad_img2img_request_is_422_naming_the_field(a1111, fields, named):
    response = a1111("/sdapi/v1/img2img", prompt="red circle",
                     **{"init_images": [data_url(picture())], "width": 32, "height": 32, **fields})
    assert response.status_code == 422, response.content
    assert named in response.json()["errors"], response.json()
    assert Job.objects.count() == 0 and InputImage.objects.count() == 0


@pytest.mark.django_db
def test_a_decompression_bomb_is_refused_before_it_is_decoded(a1111):
    # A PNG header claiming 30000×30000 pixels, in a few bytes.
    bomb = PILImage.new("1", (30000, 30000))
    buffer = io.BytesIO()
    bomb.save(buffer, format="PNG")
    response = a1111("/sdapi/v1/img2img", prompt="red circle",
                     init_images=[base64.b64encode(buffer.getvalue()).decode()])
    assert response.status_code == 422 and "init_images" in response.json()["errors"]
    assert "pixels" in response.json()["errors"]["init_images"]


@pytest.mark.django_db
def test_an_unknown_hires_upscaler_is_refused_by_name(a1111):
    response = a1111("/sdapi/v1/txt2img", prompt="red circle", width=32, height=32,
                     enable_hr=True, hr_upscaler="R-ESRGAN 4x+")
    assert response.status_code == 422
    assert "hr_upscaler" in response.json()["errors"], response.json()
    assert Job.objects.count() == 0

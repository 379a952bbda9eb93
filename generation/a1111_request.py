"""An AUTOMATIC1111 txt2img request (generation/compat_a1111.py) in Studio's terms: its schema,
the fields of features Studio lacks, and the translation to the one request
(generation/job_request.py) and back for refusals. img2img builds on it
(generation/a1111_img2img.py).

A1111 names some of Studio's fields otherwise (FIELDS, HIRES) and means others otherwise:
seeds of -1 are random, `sampler_name` and `scheduler` together name one Studio sampler, and
`batch_size × n_iter` images are one batch. Every other field of the request A1111 shares by
name, and passes through: a field added to the request is read here too, but the image to
image ones (IMAGE_FIELDS), which only img2img reads.
"""

import json
from string import hexdigits
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model

from studio.api import Text, clip

from . import engine, job_request
from .job_request import JobRequest, Refused

# Features Studio does not have: what A1111 calls them, and the values that leave them off.
OFF: dict[str, tuple[str, tuple]] = {
    "restore_faces": ("Face restoration", (False, None)),
    "tiling": ("Tiling", (False, None)),
    "styles": ("Styles", ([], None)),
    "script_name": ("Scripts", (None, "")),
    "seed_resize_from_w": ("Resize seed from width", (0, -1, None)),
    "seed_resize_from_h": ("Resize seed from height", (0, -1, None)),
    "s_churn": ("Sigma churn", (0, None)),
    "s_tmin": ("Sigma tmin", (0, None)),
    "s_tmax": ("Sigma tmax", (0, None)),
    "s_noise": ("Sigma noise", (1, None)),
    "s_min_uncond": ("Negative guidance minimum sigma", (0, None)),
    # Each sampler uses its standard eta: 0 for DDIM, 1 for the ancestral ones; webuiapi
    # sends 1 on every call.
    "eta": ("Eta", (0, 1, None)),
    "refiner_checkpoint": ("Refiner", (None, "", "None")),
}
# Settings a request may override: the model (A1111's way to pick one per call) and settings
# at the value Studio always has.
OPTIONS_OFF: dict[str, tuple] = {
    "CLIP_stop_at_last_layers": (1, None),
    "sd_vae": ("Automatic", "None", None),
    "eta_noise_seed_delta": (0, None),
}
ALIASES = {"PLMS": "PNDM", "k_euler_a": "Euler a", "k_euler": "Euler", "k_lms": "LMS",
           "k_heun": "Heun", "k_dpm_2": "DPM2", "k_dpm_2_a": "DPM2 a", "ddim": "DDIM"}
# A1111 1.9 split "DPM++ 2M Karras" into sampler "DPM++ 2M" and scheduler "Karras".
SCHEDULERS = {"automatic": "Automatic", "uniform": "Uniform", "karras": "Karras"}
# Studio's recipe fields as A1111's requests name them.
FIELDS = {"guidance_scale": "cfg_scale", "sampler": "sampler_name",
          "model": "override_settings.sd_model_checkpoint"}
# The hires fix's fields as txt2img names them (hires_params reads them when `enable_hr`).
HIRES = {"hires_scale": "hr_scale", "hires_steps": "hr_second_pass_steps",
         "hires_strength": "denoising_strength", "hires_upscaler": "hr_upscaler"}
# Image to image: only img2img reads them, under A1111's names where it has its own.
IMAGE_FIELDS = ("init_image", "mask", "strength", "mask_blur", "paste_back")
HEX_DIGITS = frozenset(hexdigits)


def model_name(title: str) -> str:
    """A model's name from its A1111 title, "name [hash]" (the hash in hex) or just "name".
    By splitting: a regex for the trailing hash backtracks quadratically over whitespace."""
    head, bracket, digest = title.removesuffix("]").rpartition("[")
    if title.endswith("]") and bracket and digest and set(digest) <= HEX_DIGITS:
        return head.rstrip()
    return title


# Scripts or settings one request may name; real clients send a handful.
MAX_NAMED = 32


class OptionsIn(BaseModel):
    """POST /sdapi/v1/options: the caller's model by its title or name; any other setting
    only at the value Studio always has (OPTIONS_OFF, or what GET /options answers)."""

    model_config = ConfigDict(extra="allow")

    sd_model_checkpoint: Text | None = None


def options_errors(body: OptionsIn, current: dict) -> dict[str, str]:
    """An error for each setting the body would change, other than the model. The checkpoint's
    hash follows the model and is never set by itself."""
    extra = body.model_extra or {}
    if len(extra) > MAX_NAMED:
        return {"__all__": f"At most {MAX_NAMED} settings."}
    return {
        clip(key): "This setting cannot be changed here."
        for key, value in extra.items()
        if key != "sd_checkpoint_hash" and value not in OPTIONS_OFF.get(key, ())
        and (key not in current or value != current[key])
    }


class OverrideSettings(BaseModel):
    """The model by its title (null is refused by name); other keys must match OPTIONS_OFF."""

    model_config = ConfigDict(extra="allow")

    sd_model_checkpoint: Text = ""


class A1111Fields(BaseModel):
    """The fields A1111 names or means otherwise than Studio, and its own switches."""

    model_config = ConfigDict(extra="allow")

    prompt: Text = ""
    seed: int | None = -1
    subseed: int | None = -1
    sampler_name: Text | None = None
    sampler_index: Text | None = None
    scheduler: Text | None = None
    cfg_scale: float | None = None
    batch_size: int = 1
    n_iter: int = 1
    send_images: bool = True
    override_settings: OverrideSettings | None = None
    alwayson_scripts: dict[str, Any] | None = None


class Txt2ImgFields(A1111Fields):
    """txt2img's hires fix, as A1111 names it (hires_params reads it)."""

    enable_hr: bool | None = False
    hr_scale: float | None = 2.0
    hr_second_pass_steps: int | None = 0
    denoising_strength: float | None = None
    hr_upscaler: Text | None = None
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    hr_sampler_name: Text | None = None
    hr_scheduler: Text | None = None
    hr_checkpoint_name: Text | None = None
    hr_prompt: Text | None = ""
    hr_negative_prompt: Text | None = ""


# Studio's fields that A1111 names as Studio does but means otherwise.
OWN = ("prompt", "seed", "subseed", "batch_size")
# The fields Studio reads, the request's shared ones among them; every other field is checked
# against OFF or ignored. A plain pydantic model: Ninja's Schema drops extra fields before
# they can be checked.
Txt2ImgIn = create_model(
    "Txt2ImgIn", __base__=Txt2ImgFields,
    **job_request.schema_fields(leave_out={*FIELDS, *OWN, *HIRES, *IMAGE_FIELDS}),
)


def script_error(script: Any) -> str | None:
    """What is wrong with an `alwayson_scripts` entry, `{"args": [...]}` or the bare list; None
    when its args are empty or start with false (A1111's "enabled")."""
    args = script.get("args") if isinstance(script, dict) else script
    if args is None:
        return None
    if not isinstance(args, list):
        return 'Send an object with an "args" list.'
    if args and args[0] is not False:
        return "Extension scripts are not supported."
    return None


def unsupported(body: A1111Fields) -> dict[str, str]:
    """An error for each feature switched on that Studio lacks, and each malformed script."""
    errors = {}
    extra = body.model_extra or {}
    for field, (feature, off) in OFF.items():
        if field in extra and extra[field] not in off:
            hint = f"send {json.dumps(off[0])} or leave it out"
            errors[field] = f"{feature} is not supported; {hint}."
    scripts = body.alwayson_scripts or {}
    overrides = (body.override_settings.model_extra if body.override_settings else None) or {}
    # One error a key would make a refusal as large as the request, rendered on the loop.
    for field, named in (("alwayson_scripts", scripts), ("override_settings", overrides)):
        if len(named) > MAX_NAMED:
            errors[field] = f"At most {MAX_NAMED} entries."
    for name, script in scripts.items() if len(scripts) <= MAX_NAMED else ():
        if (error := script_error(script)) is not None:
            errors[f"alwayson_scripts.{clip(name)}"] = error
    for key, value in overrides.items() if len(overrides) <= MAX_NAMED else ():
        if value not in OPTIONS_OFF.get(key, ()):
            errors[f"override_settings.{clip(key)}"] = "This setting cannot be changed here."
    if body.n_iter < 1:
        errors["n_iter"] = "Must be 1 or more."
    return errors


def studio_sampler(body: A1111Fields) -> str | None:
    """Studio's sampler for A1111's sampler and scheduler; None for Studio's default."""
    name = body.sampler_name or body.sampler_index
    scheduler = (body.scheduler or "automatic").lower()
    if scheduler not in SCHEDULERS:
        known = ", ".join(SCHEDULERS.values())
        raise Refused({"scheduler": f"{body.scheduler!r} is not supported; use {known}."})
    if not name:
        return None
    name = ALIASES.get(name, name)
    if scheduler == "karras" and not name.endswith(" Karras"):
        if f"{name} Karras" not in engine.SAMPLERS:
            with_karras = [s.removesuffix(" Karras") for s in engine.SAMPLERS if "Karras" in s]
            raise Refused({"scheduler": f"Karras is not available with {name}; it is with "
                                    f"{', '.join(with_karras)}."})
        name = f"{name} Karras"
    return name


LORA_TAG = "<lora:"


def prompt_loras(prompt: str) -> tuple[str, list[dict[str, Any]]]:
    """The prompt without its `<lora:name:weight>` tags, and the LoRAs they name, as A1111
    reads them: the weight defaults to 1, and `<lora:name:te:unet>` (or `te=`, `unet=`) may
    weight the text encoder and the UNet apart, which Studio refuses unless they agree. A
    scanner, not a regex: it reads the prompt once. ValueError names the tag at fault."""
    kept, loras, position = [], [], 0
    while (start := prompt.find(LORA_TAG, position)) >= 0:
        end = prompt.find(">", start)
        if end < 0:
            break
        kept.append(prompt[position:start])
        loras.append(_lora_tag(prompt[start + len(LORA_TAG):end]))
        position = end + 1
    kept.append(prompt[position:])
    return "".join(kept).strip(), loras


def _lora_tag(inside: str) -> dict[str, Any]:
    name, *args = inside.split(":")
    named = dict(arg.split("=", 1) for arg in args if "=" in arg)
    positional = [arg for arg in args if "=" not in arg]
    te = named.get("te", positional[0] if positional else "1")
    unet = named.get("unet", positional[1] if len(positional) > 1 else te)
    try:
        te_weight, unet_weight = float(te), float(unet)
    except ValueError:
        raise ValueError(f"<lora:{clip(inside)}>: the weight must be a number") from None
    if te_weight != unet_weight:
        raise ValueError(f"<lora:{clip(inside)}>: Studio applies one weight to the text "
                         "encoder and the UNet alike")
    return {"name": name.strip(), "weight": te_weight}


def shared_params(body: A1111Fields, default_model: str | None) -> dict[str, Any]:
    """The fields txt2img and img2img share, as Studio's request names them; Refused names
    A1111's fields at fault. Without `override_settings.sd_model_checkpoint` the model is
    `default_model` (the caller's own, POST /sdapi/v1/options), else the server's."""
    errors = unsupported(body)
    if errors:
        raise Refused(errors)
    shared = body.model_dump(
        include=set(job_request.NAMES) - {*FIELDS, *OWN, *HIRES, *IMAGE_FIELDS}
    )
    subseed = body.subseed
    if subseed is None or subseed < 0:
        subseed = engine.random_seed() if shared.get("subseed_strength") else 0
    title = body.override_settings.sd_model_checkpoint if body.override_settings else ""
    try:
        prompt, tagged = prompt_loras(body.prompt)
    except ValueError as exc:
        raise Refused({"prompt": str(exc)}) from exc
    if tagged:
        shared["loras"] = [*(shared.get("loras") or []), *tagged]
    return {
        **shared, "prompt": prompt, "model": model_name(title) or default_model,
        "seed": None if body.seed is None or body.seed < 0 else body.seed,
        "subseed": subseed, "sampler": studio_sampler(body), "guidance_scale": body.cfg_scale,
        "batch_size": body.batch_size * body.n_iter,
    }


def studio_request(body: Txt2ImgFields, default_model: str | None = None) -> JobRequest:
    """The txt2img request as Studio's; Refused names A1111's fields at fault."""
    return job_request.parse({**shared_params(body, default_model), **hires_params(body)})


# What A1111 sends for "the first pass's": a hires pass with a sampler, scheduler or model of
# its own is refused, since Studio's hires fix refines with the first pass's.
SAME = (None, "", "Use same sampler", "Use same scheduler", "Use same checkpoint")


def hires_params(body: Txt2ImgFields) -> dict[str, Any]:
    """With `enable_hr`, the hires fix as Studio's request names it; none without, whatever
    the other hr_ fields say (clients send them all, as A1111 ignores them then). Left out
    (null), the upscaler is Studio's default, "Latent" as A1111's, and the strength Studio's
    default, where A1111's page starts at 0.7 (webuiapi sends that). Refused
    names each hr_ field asking for what Studio's hires fix does not do."""
    if not body.enable_hr:
        return {}
    errors = {}
    sampler = body.sampler_name or body.sampler_index
    if body.hr_sampler_name not in (*SAME, sampler):
        errors["hr_sampler_name"] = ("The hires pass uses the first pass's sampler; "
                                     "send null or the same sampler_name.")
    if body.hr_scheduler not in SAME and (body.hr_scheduler.lower()
                                          != (body.scheduler or "automatic").lower()):
        errors["hr_scheduler"] = ("The hires pass uses the first pass's scheduler; "
                                  "send null or the same scheduler.")
    if body.hr_checkpoint_name not in SAME:
        errors["hr_checkpoint_name"] = "The hires pass uses the first pass's model; send null."
    negative = getattr(body, "negative_prompt", None) or ""
    for field, first in (("hr_prompt", body.prompt), ("hr_negative_prompt", negative)):
        if getattr(body, field) not in (None, "", first):
            errors[field] = "The hires pass uses the first pass's prompts; send an empty string."
    scale = hires_scale(body, errors)
    if errors:
        raise Refused(errors)
    return {"hires_scale": scale, "hires_steps": body.hr_second_pass_steps,
            "hires_strength": body.denoising_strength,
            "hires_upscaler": body.hr_upscaler}


def hires_scale(body: Txt2ImgFields, errors: dict[str, str]) -> float | None:
    """`hr_scale`, or the scale `hr_resize_x` and `hr_resize_y` (0: in proportion to the
    other) make of width and height. Studio scales both sides by one factor and never crops,
    so a size it cannot reach that way is an error here, under the field at fault."""
    x, y = body.hr_resize_x or 0, body.hr_resize_y or 0
    if not x and not y:
        return body.hr_scale if body.hr_scale is not None else 2.0
    field = "hr_resize_x" if x else "hr_resize_y"
    width, height = getattr(body, "width", None), getattr(body, "height", None)
    if x < 0 or y < 0:
        errors[field] = "Send a size in pixels, or 0 to use hr_scale."
        return None
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        errors[field] = "Send width and height with it, or use hr_scale."
        return None
    scale = x / width if x else y / height
    reached = engine.Hires(scale=scale).size(width, height)
    if reached != (x or reached[0], y or reached[1]):
        errors[field] = (
            f"{x or 'auto'}x{y or 'auto'} is not {width}x{height} times one scale in "
            f"multiples of 8, and Studio does not crop: send hr_scale, or a size in the "
            f"same proportions, such as {reached[0]}x{reached[1]}."
        )
        return None
    return scale


def a1111_errors(refused: Refused, body: A1111Fields,
                 names: dict[str, str] | None = None) -> dict[str, str]:
    """A refusal's messages under A1111's names for the fields (`names`: Studio's to
    A1111's; txt2img's by default)."""
    names = names or TXT2IMG_NAMES
    errors = {names.get(key, key): message for key, message in refused.errors.items()}
    if "batch_size" in errors and body.n_iter > 1:
        errors["batch_size"] += f" (batch_size × n_iter is {body.batch_size * body.n_iter})"
    return errors


# Studio's names to txt2img's.
TXT2IMG_NAMES = {**FIELDS, **HIRES}

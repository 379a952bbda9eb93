"""AUTOMATIC1111's sampler names, each the diffusers scheduler class (by name) and the config
overrides it stands for. Data only: ``samplers.py`` builds them, ``schedules.py`` records and
checks them."""

from typing import Any

_KARRAS = {"use_karras_sigmas": True}
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}

# name -> (diffusers scheduler class name, config overrides)
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "DDPM": ("DDPMScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),  # A1111's PLMS
    "LMS": ("LMSDiscreteScheduler", {}),
    "LMS Karras": ("LMSDiscreteScheduler", _KARRAS),
    "Heun": ("HeunDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", _DPMPP_2M),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {**_DPMPP_2M, **_KARRAS}),
    "DPM++ SDE Karras": ("DPMSolverSDEScheduler", _KARRAS),
    "DPM++ 2M SDE": (
        "DPMSolverMultistepScheduler",
        {**_DPMPP_2M, "algorithm_type": "sde-dpmsolver++"},
    ),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DEIS": ("DEISMultistepScheduler", {}),
}

# The one scheduler whose config holds the run's seeds: one Brownian tree per image, seeded
# like its initial noise, so image i of a batch takes the same path as a run with seed + i.
SEEDED_CLASS = "DPMSolverSDEScheduler"
SEEDS_KEY = "noise_sampler_seed"


def per_image_seeds(seed: int, batch_size: int) -> list[int]:
    return [seed + i for i in range(batch_size)]

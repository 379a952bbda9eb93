"""The model families Studio runs: SD 1.x, SD 2.x (epsilon and v-prediction) and SDXL base.

A family declares the diffusers pipeline that runs it, the width of its full-size UNet's
cross-attention, how an original-layout checkpoint shows it (the token embeddings of its text
encoders, ``checkpoints.py``) and the config folders shipped for it. Everything else a recipe
is checked against comes from the model's own configs, or for a single-file checkpoint from
its family's folder: the native size (the UNet's ``sample_size`` times the VAE's scale: 512,
768 for SD 2.x v-prediction, 1024 for SDXL), the prompt's window (the tokenizer's 77 tokens,
75 between start and end), the training schedule. The size limits are the same rule for every
family (``specs.ModelSpec.limits``), and every sampler runs on every family.

``configs/<folder>/`` are diffusers config folders without weights, as
``from_single_file(config=...)`` reads them, so a single file loads with no hub access. Their
values are those of the hub repos diffusers itself maps each family to:

    sd1   stable-diffusion-v1-5/stable-diffusion-v1-5   PNDM, epsilon, 512
    sd2   stabilityai/stable-diffusion-2-1-base          PNDM, epsilon, 512
    sd2v  stabilityai/stable-diffusion-2-1               DDIM, v-prediction, 768
    sdxl  stabilityai/stable-diffusion-xl-base-1.0       Euler, epsilon, 1024

Their tokenizer folders hold only their settings; the CLIP vocabulary they share is
``configs/clip`` (``configs/build_tokenizer.py`` rebuilds both).

Light: json only. The web tier tells a model's family while it validates a request.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).resolve().parent / "configs"
CLIP_VOCABULARY = CONFIGS / "clip"
PREDICTION_TYPES = ("epsilon", "v_prediction")


class ModelLoadError(RuntimeError):
    """The model's files are missing, unreadable or not a model Studio runs; the message
    says what was found."""


@dataclass(frozen=True)
class Family:
    name: str  # what the models list and a recipe call it
    title: str  # what a person calls it
    pipeline: str  # the diffusers pipeline class that runs it
    context_width: int  # the full-size UNet's cross-attention width
    # The token embedding of each text encoder in an original-layout checkpoint.
    text_encoders: tuple[str, ...]
    # Prediction type -> the shipped config folder; "epsilon" is the default.
    config_folders: dict[str, str] = field(default_factory=dict)

    def config_folder(self, prediction_type: str) -> Path:
        """The shipped config folder for this prediction type. A family without a folder of
        its own for it (SDXL v-prediction) takes its default one, and the loader sets the
        scheduler's prediction type."""
        return CONFIGS / self.config_folders.get(prediction_type, self.config_folders["epsilon"])


SDXL = Family(
    name="sdxl",
    title="SDXL",
    pipeline="StableDiffusionXLPipeline",
    context_width=2048,
    text_encoders=(
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        "conditioner.embedders.1.model.token_embedding.weight",
    ),
    config_folders={"epsilon": "sdxl"},
)
SD2 = Family(
    name="sd2",
    title="SD 2.x",
    pipeline="StableDiffusionPipeline",
    context_width=1024,
    text_encoders=("cond_stage_model.model.token_embedding.weight",),  # OpenCLIP-H
    config_folders={"epsilon": "sd2", "v_prediction": "sd2v"},
)
SD1 = Family(
    name="sd1",
    title="SD 1.x",
    pipeline="StableDiffusionPipeline",
    context_width=768,
    text_encoders=("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",),
    config_folders={"epsilon": "sd1"},
)
# In the order a checkpoint is tested against them.
FAMILIES = {family.name: family for family in (SDXL, SD2, SD1)}
PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
# What an inpainting model's model_index.json names: the same family's model, run by Studio
# with the family's pipeline (its 9-channel UNet says it inpaints, specs.ModelSpec).
INPAINT_PIPELINES = {
    "StableDiffusionInpaintPipeline": "StableDiffusionPipeline",
    "StableDiffusionXLInpaintPipeline": "StableDiffusionXLPipeline",
}


def family_of(pipeline_class: Any, unet: dict[str, Any]) -> Family:
    """The family of a diffusers pipeline, from its ``model_index.json`` class and its UNet's
    config. SD 2.x's UNet projects its attention inputs linearly and reads a 1024-wide text
    encoder; SD 1.x's does neither. Small models of either layout (tests, the demo model) are
    told apart the same way."""
    if isinstance(pipeline_class, str):
        pipeline_class = INPAINT_PIPELINES.get(pipeline_class, pipeline_class)
    if pipeline_class == SDXL.pipeline:
        return SDXL
    if pipeline_class != SD1.pipeline:
        raise ModelLoadError(
            f"a {pipeline_class} pipeline; Studio runs {' and '.join(PIPELINES)} models"
        )
    if unet.get("use_linear_projection") or unet.get("cross_attention_dim") == SD2.context_width:
        return SD2
    return SD1


def read_json(path: Path) -> dict[str, Any]:
    """One JSON object from a config file; anything else is a ModelLoadError naming it."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return value


def folder_family(folder: Path) -> Family:
    """The family of a local diffusers folder (a model's, or a config folder)."""
    index = read_json(folder / "model_index.json")
    return family_of(index.get("_class_name"), read_json(folder / "unet" / "config.json"))

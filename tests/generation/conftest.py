"""Tiny models for engine tests, built like diffusers' fast tests (``get_dummy_components``).

``tiny_components``: a Stable-Diffusion-style model with the demo model's schedule (cosine
betas, v-prediction, DDIM with trailing spacing). ``family_components``: one per family Studio
runs (SD 1.x, SD 2.x with v-prediction, SDXL) with the real CLIP tokenizers Studio ships,
saved both as a diffusers folder and as a single-file checkpoint in the original layout
(``family_models``). Saved and loaded back, as real models are.
"""

import io
import json
import shutil
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from generation import engine
from generation.demo_model.architecture import sampling_scheduler
from generation.engine.families import CONFIGS
from generation.engine.samplers import scheduler_from_ref
from generation.engine.specs import config_tokenizer

from .checkpoint_files import pipeline_to_original

MAX_TOKENS = 24
DEMO_WEIGHTS = Path(__file__).resolve().parents[2] / "generation" / "demo_model" / "weights"


def tiny_components() -> dict:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(4, 8, 8),  # x4, like the demo model
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=2,
        scaling_factor=0.5,  # not SD's, so previews fit their own projection
    )
    # Letters and digits as tokens: no merges to learn, and prompt lengths easy to reason about.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    scheduler = sampling_scheduler()
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


@pytest.fixture(autouse=True)
def one_thread():
    # Two busy cores: a second intra-op thread only waits for the first (10-100x slower).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model) -> engine.StudioPipeline:
    return engine.load_pipeline(tiny_model, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_ref(tiny_model) -> engine.ModelRef:
    return engine.ModelRef(name="tiny", source=tiny_model)


@pytest.fixture
def make_recipe(tiny_ref):
    """A validated recipe for the tiny model: 32x32, 4 steps, unless told otherwise."""

    def make(**fields) -> engine.Recipe:
        values = {"prompt": "a red circle", "steps": 4, "width": 32, "height": 32, "seed": 7}
        return engine.build_recipe(model=tiny_ref, **{**values, **fields})

    return make


@pytest.fixture(scope="session")
def demo_pipeline() -> engine.StudioPipeline:
    if not (DEMO_WEIGHTS / "model_index.json").is_file():
        pytest.skip("the demo model's weights are not in generation/demo_model/weights yet")
    return engine.load_pipeline(str(DEMO_WEIGHTS), device="cpu", dtype=torch.float32)


FAMILY_NAMES = ("sd1", "sd2", "sdxl")
# SD 1.x's schedule, as the families' shipped configs have it.
SD_SCHEDULE = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "steps_offset": 1, "timestep_spacing": "leading", "num_train_timesteps": 1000,
}


def shipped_tokenizer(folder: str, subfolder: str = "tokenizer") -> CLIPTokenizer:
    """A tokenizer Studio ships for single files (generation/engine/configs)."""
    return config_tokenizer(CONFIGS / folder, subfolder)


def _text_config(width: int, act: str = "quick_gelu", projection: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=width, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=49408, max_position_embeddings=77, hidden_act=act,
        projection_dim=projection, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    )


def _tiny_unet(**options) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=32, **options,
    )


def _tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=64, norm_num_groups=32,
    )


def family_components(family: str) -> dict:
    """A tiny random model of the family, in the shapes of diffusers' fast tests. SDXL's two
    text encoders differ in width (32 and 64): a single file's loader tells them apart so."""
    if family in ("sd1", "sd2"):
        sd2 = family == "sd2"
        torch.manual_seed(0)
        text_encoder = CLIPTextModel(_text_config(32, act="gelu" if sd2 else "quick_gelu"))
        return {
            "unet": _tiny_unet(cross_attention_dim=32, **(
                {"attention_head_dim": (2, 4), "use_linear_projection": True} if sd2 else {}
            )),
            "vae": _tiny_vae(),
            "text_encoder": text_encoder,
            "tokenizer": shipped_tokenizer(family),
            "scheduler": EulerDiscreteScheduler(
                **SD_SCHEDULE, prediction_type="v_prediction" if sd2 else "epsilon"
            ),
            "safety_checker": None, "feature_extractor": None, "image_encoder": None,
            "requires_safety_checker": False,
        }
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config(32))
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(64, act="gelu"))
    return {
        "unet": _tiny_unet(
            attention_head_dim=(2, 4), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2), cross_attention_dim=32 + 64,
            projection_class_embeddings_input_dim=6 * 8 + 32,  # time ids + the pooled text
        ),
        "vae": _tiny_vae(),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": shipped_tokenizer("sdxl"),
        "tokenizer_2": shipped_tokenizer("sdxl", "tokenizer_2"),
        "scheduler": EulerDiscreteScheduler(**SD_SCHEDULE),
        "image_encoder": None, "feature_extractor": None, "add_watermarker": False,
    }


def stock_class(family: str) -> type:
    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


@dataclass(frozen=True)
class FamilyModel:
    family: str
    folder: str  # a diffusers folder
    file: str  # the same weights as one original-layout .safetensors file
    config: Path  # the folder without weights, which the file's sidecar names


def save_family_model(family: str, root: Path) -> FamilyModel:
    pipe = stock_class(family)(**family_components(family))
    folder, config = root / "folder", root / "config"
    pipe.save_pretrained(folder, safe_serialization=True)
    shutil.copytree(folder, config, ignore=shutil.ignore_patterns("*.safetensors"))
    file = root / f"tiny-{family}.safetensors"
    save_file(pipeline_to_original(pipe, family), file)
    (root / f"tiny-{family}.studio.json").write_text(json.dumps({"config": "config"}))
    return FamilyModel(family, str(folder), str(file), config)


@pytest.fixture(scope="session")
def family_models(tmp_path_factory) -> dict[str, FamilyModel]:
    """Each family's tiny model, as a folder and as a single file, built once a session."""
    return {
        family: save_family_model(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        for family in FAMILY_NAMES
    }


@pytest.fixture
def family_pipeline(family_models):
    def load(family: str) -> engine.StudioPipeline | engine.StudioXLPipeline:
        source = family_models[family].folder
        return engine.load_pipeline(source, device="cpu", dtype=torch.float32)

    return load


# ---- Image to image (test_engine_img2img.py, test_engine_inpaint.py, test_engine_hires.py) ----

def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def picture(width: int = 32, height: int = 32) -> Image.Image:
    """An input image with shapes and colours a model's VAE keeps apart."""
    image = Image.new("RGB", (width, height), (30, 60, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 6, height // 6, width * 5 // 6, height * 5 // 6), fill=(220, 40, 40))
    draw.rectangle((0, height * 3 // 4, width // 2, height), fill=(240, 220, 30))
    return image


def corner_mask(width: int = 32, height: int = 32) -> Image.Image:
    """White (repaint) over the top-left quarter."""
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, width // 2 - 1, height // 2 - 1), fill=255)
    return mask


@dataclass(frozen=True)
class Stored:
    """An input as a door stores it: the canonical PNG, its ref, and ``inputs`` for generate."""

    png: bytes
    ref: "engine.ImageRef | engine.MaskRef"

    @property
    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.png))


def stored_image(image: Image.Image) -> Stored:
    return Stored(*engine.canonical_image(png_bytes(image)))


def stored_mask(mask: Image.Image) -> Stored:
    png, ref, _ = engine.canonical_mask(png_bytes(mask))
    return Stored(png, ref)


def inputs_of(*stored: Stored) -> dict[str, bytes]:
    return {item.ref.sha256: item.png for item in stored}


def stock_view(cls: type, pipeline, recipe: "engine.Recipe"):
    """A stock diffusers pipeline of ``cls`` over the pipeline's modules, with the scheduler
    the recipe records: what the engine's pixels are compared with."""
    components = {**pipeline.components, "scheduler": scheduler_from_ref(recipe.scheduler)}
    options = ({"add_watermarker": False} if "XL" in cls.__name__
               else {"requires_safety_checker": False})
    stock = cls(**components, **options)
    stock.set_progress_bar_config(disable=True)
    return stock


def cpu_generators(seed: int, count: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]


def assert_same_pixels(ours: list[Image.Image], theirs: list[Image.Image]) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.size == b.size
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="session")
def tiny_inpainting_model(tmp_path_factory) -> str:
    """The tiny model with a 9-channel UNet (latents, mask, masked image), saved as an
    inpainting pipeline is: what a model like stable-diffusion-inpainting looks like."""
    components = tiny_components()
    torch.manual_seed(0)
    config = {**components["unet"].config, "in_channels": 9}
    components["unet"] = UNet2DConditionModel.from_config(config)
    path = tmp_path_factory.mktemp("tiny-inpainting")
    StableDiffusionInpaintPipeline(**components).save_pretrained(path, safe_serialization=True)
    return str(path)
